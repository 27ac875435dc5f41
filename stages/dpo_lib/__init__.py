"""The dpo stage's library: AST stripping of PoT programs (``strip``), preference pairs and their
mix (``pairs``), the pair sources (``sources``) and the stage itself (``stage``)."""
