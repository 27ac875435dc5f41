"""The evolve stage's library: the keep filter (:mod:`~stages.evolve_lib.keep`), shallow tree
exploration (:mod:`~stages.evolve_lib.tree`), sampling and scoring (:mod:`~stages.evolve_lib.sampling`),
one process's share of a round (:mod:`~stages.evolve_lib.worker`), round metrics
(:mod:`~stages.evolve_lib.metrics`) and the stage itself (:mod:`~stages.evolve_lib.stage`)."""
