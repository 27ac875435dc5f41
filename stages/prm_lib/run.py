"""The PRM stage's build: labels, training (optionally reweighted), saving, evaluation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stages.prm_lib import pipeline as P
from stages.prm_lib.model import EncodingConfig, load_token_classifier

log = logging.getLogger("mathforge.prm")


def make_labels(ctx, args, seed: int, policy, policy_tok, imported: list[dict], label_problems: list[dict],
                metrics: dict, timings: dict) -> list[dict]:
    if args.label_source == "import":
        return imported
    if args.label_source == "judge":
        from stages.common.teachers import ResponseCache  # noqa: PLC0415

        chat = P.judge_model(args, ctx.run_dir)
        cache = ResponseCache(ctx.run_dir / "prm_judge_cache.jsonl")  # outside the version: a rerun pays nothing
        with P.timed("sample_s", timings):
            if args.judge_generates:
                samples = P.teacher_solutions(chat, cache, label_problems, args.samples_per_problem,
                                              args.gen_max_new_tokens)
            else:
                samples = P.sample_solutions(policy, policy_tok, label_problems, n=args.samples_per_problem,
                                             temperature=args.sample_temperature,
                                             max_new_tokens=args.gen_max_new_tokens,
                                             batch_size=args.gen_batch_size, seed=seed)
        chosen, mining = P.mined_solutions(samples, low=args.mining_low, high=args.mining_high,
                                           limit=args.max_label_solutions,
                                           max_correct_per_wrong=args.max_correct_per_wrong)
        with P.timed("label_s", timings):
            rows, failed = P.judge_rows(chat, cache, chosen, args.judge_transform)
        metrics["labels"] = {**mining, "solutions": len(chosen), "judge_failed": failed,
                             "judge_usage": chat.usage.to_json()}
        return rows
    with P.timed("sample_s", timings):
        samples = P.sample_solutions(policy, policy_tok, label_problems, n=args.samples_per_problem,
                                     temperature=args.sample_temperature, max_new_tokens=args.gen_max_new_tokens,
                                     batch_size=args.gen_batch_size, seed=seed)
    chosen, mining = P.mined_solutions(samples, low=args.mining_low, high=args.mining_high,
                                       limit=args.max_label_solutions,
                                       max_correct_per_wrong=args.max_correct_per_wrong)
    with P.timed("label_s", timings):
        rows = P.mc_rows(policy, policy_tok, chosen, args, seed)
    if args.perturbed_negatives:
        with P.timed("perturb_s", timings):
            extra = P.perturbed_rows(samples, args.perturbed_negatives, seed, exclude=chosen)
        metrics["perturbed_pairs"] = len(extra) // 2
        rows += extra
    if args.mc_label == "soft":
        for r in rows:
            r["hard_labels"], r["labels"] = r["labels"], r["soft_labels"]
    steps = [x for r in rows for x in r["soft_labels"]]
    metrics["labels"] = {**mining, "solutions": len(rows), "steps": len(steps),
                         "perturbed_solutions": sum(bool(r.get("perturbed")) for r in rows),
                         "solution_accuracy": sum(r["solution_correct"] for r in rows) / len(rows) if rows else 0.0,
                         "hard_positive_rate": sum(x > 0 for x in steps) / len(steps) if steps else 0.0,
                         "mean_soft_label": sum(steps) / len(steps) if steps else 0.0}
    return rows


def run_stage(ctx, args, cfg, model_args, enc: EncodingConfig, imported: list[dict], label_problems: list[dict],
              bon: list[dict], *, needs_policy: bool) -> Path:
    from stages.common.modeling import load_causal_lm, load_tokenizer, materialize_parent, peft_config  # noqa: PLC0415
    from stages.prm_lib.scorer import PRMScorer  # noqa: PLC0415
    from stages.prm_lib.trainer import PRMCollator, PRMTrainer, featurize  # noqa: PLC0415

    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    seed = cfg.seed
    policy = policy_tok = None
    if needs_policy:
        ppath = materialize_parent(args.policy, ctx.run_dir, is_main=ctx.is_main, seed=seed).path
        policy_tok = load_tokenizer(ppath)
        policy = load_causal_lm(ppath)
        metrics["policy"] = ppath
    with P.timed("labels_total_s", timings):
        rows = make_labels(ctx, args, seed, policy, policy_tok, imported, label_problems, metrics, timings)
    if not rows:
        raise ValueError("no labelled solutions: the policy wrote no program with steps (is it trained?)")
    ctx.write_jsonl("labels.jsonl", rows)
    train_rows, eval_rows = P.split_rows(rows, args.eval_fraction, seed)
    eval_rows = [r for r in eval_rows if not r.get("perturbed")]  # step metrics: the policy's own solutions

    tokenizer = load_tokenizer(ctx.parent.path, padding_side="right")
    head = reference = None
    if enc.prm_type == "implicit":
        from stages.prm_lib.implicit import ImplicitHead  # noqa: PLC0415

        model = load_causal_lm(ctx.parent.path, model_args)
        ref_path = ctx.parent.path if args.implicit_reference in (None, "", "@backbone") else materialize_parent(
            args.implicit_reference, ctx.run_dir, is_main=ctx.is_main, seed=seed).path
        reference = load_causal_lm(ref_path, model_args)
        sizes = (model.get_input_embeddings().weight.shape[0], reference.get_input_embeddings().weight.shape[0])
        if sizes[0] != sizes[1]:
            raise ValueError(f"implicit_reference {ref_path}: vocabulary of {sizes[1]} tokens, the backbone has "
                             f"{sizes[0]}; the log-ratio needs the same tokenizer")
        head = ImplicitHead(reference, enc.implicit_beta)
        metrics["implicit_reference"] = str(ref_path)
        peft = peft_config(model_args, "CAUSAL_LM")
    else:
        model = load_token_classifier(ctx.parent.path, enc.num_labels, model_args)
        peft = peft_config(model_args, "TOKEN_CLS")
    if peft is not None:
        from peft import get_peft_model  # noqa: PLC0415

        model = get_peft_model(model, peft)
    feat_kw = {"last_step_only": args.last_step_only, "hard_threshold": args.label_threshold}
    reweighter = None
    if args.reweight != "none" and not args.baseline:
        train_rows, meta_rows = P.split_rows(train_rows, args.meta_fraction, seed + 1)
        feats = featurize(train_rows, tokenizer, enc, **feat_kw)
        reweighter, names = _reweighter(args, cfg, enc, tokenizer, train_rows, feats,
                                        featurize(meta_rows, tokenizer, enc, **feat_kw), seed, head)
    else:
        feats = featurize(train_rows, tokenizer, enc, **feat_kw)
    cfg.output_dir = str(ctx.trainer_dir)
    cfg.run_name = ctx.run_name
    cfg.remove_unused_columns = False
    trainer = PRMTrainer(model=model, args=cfg, train_dataset=feats, data_collator=PRMCollator(tokenizer.pad_token_id),
                         label_mode=enc.label_mode, class_weights=args.class_weights, instance_weight_fn=reweighter,
                         step_head=head)
    with P.timed("train_s", timings):
        result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    metrics["train"] = dict(result.metrics)
    metrics["train_rows"], metrics["eval_rows"] = len(feats), len(eval_rows)
    model = trainer.model
    if peft is not None:
        model = model.merge_and_unload()  # the scorer loads plain weights
    model.eval()
    if ctx.is_main:
        model.save_pretrained(ctx.work_dir)
        tokenizer.save_pretrained(ctx.work_dir)
        enc.save(ctx.work_dir)
        if reference is not None:  # a self-contained checkpoint: the scorer needs the reference too
            from stages.prm_lib.implicit import REFERENCE_DIR  # noqa: PLC0415

            reference.save_pretrained(ctx.work_dir / REFERENCE_DIR)
        if reweighter is not None:
            metrics["reweight"] = _save_reweight(reweighter, names, ctx.work_dir, args.reweight)
    scorer = PRMScorer(ctx.work_dir, model=model, tokenizer=tokenizer, config=enc, batch_size=32, reference=reference)
    with P.timed("eval_steps_s", timings):
        if eval_rows:
            metrics["eval"] = P.evaluate_steps(scorer, eval_rows, args.label_threshold)
    if bon:
        with P.timed("best_of_n_s", timings):
            samples = P.sample_solutions(policy, policy_tok, bon, n=args.bon_n, temperature=args.bon_temperature,
                                         max_new_tokens=args.gen_max_new_tokens, batch_size=args.gen_batch_size,
                                         seed=seed + 7)
            metrics["best_of_n"], details = P.evaluate_best_of_n(scorer, samples, args.bon_n, seed)
        ctx.write_jsonl("best_of_n_details.jsonl", details)
        b = metrics["best_of_n"]
        log.info("best-of-%d on %d problems: PRM(min) %.3f %s, random %.3f %s, majority %.3f", args.bon_n,
                 b["n_problems"], b["prm_min"]["accuracy"], b["prm_min"]["ci95"], b["random"]["accuracy"],
                 b["random"]["ci95"], b["majority_vote"]["accuracy"])
    metrics["timings_s"] = timings
    metrics["train_and_eval_s"] = round(sum(v for k, v in timings.items() if k != "labels_total_s"), 2)
    ctx.write_json("log_history.json", trainer.state.log_history)
    return ctx.finalize(metrics)


def _reweighter(args, cfg, enc, tokenizer, train_rows, feats, meta_feats, seed, head=None):
    from stages.prm_lib.reweight import DreamPRMReweighter  # noqa: PLC0415

    if args.reweight == "domain":
        names = sorted({str(r.get("domain", "default")) for r in train_rows})
        groups = [names.index(str(train_rows[f["index"]].get("domain", "default"))) for f in feats]
    else:
        names = [str(i) for i in range(len(feats))]
        groups = list(range(len(feats)))
    for j, f in enumerate(feats):
        f["index"] = j  # the reweighter maps batch rows to groups by feature position
    rw = DreamPRMReweighter(groups, len(names), meta_feats,
                            pad_token_id=tokenizer.pad_token_id, label_mode=enc.label_mode,
                            inner_lr=cfg.learning_rate, meta_lr=args.meta_lr,
                            meta_batch_size=cfg.per_device_train_batch_size, class_weights=args.class_weights,
                            seed=seed, step_head=head)
    return rw, names


def _save_reweight(rw, names, folder, mode):
    from stages.prm_lib.reweight import save_weights  # noqa: PLC0415

    return save_weights(rw, names, folder, mode)
