"""The ``mmsafe`` command: argv → RunConfig → runner → report. Thin on purpose; starts without torch."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from mmsafe.errors import ConfigError, MmsafeError, describe, without_addresses
from mmsafe.report.escape import terminal_safe as _safe

log = logging.getLogger("mmsafe")

KIND_OPTIONS = (
    ("model", "models"),
    ("benchmark", "benchmarks"),
    ("attack", "attacks"),
    ("defense", "defenses"),
    ("judge", "judges"),
    ("trainer", "trainers"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmsafe", description="Evaluate, attack and defend multimodal large language models."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run",
        help="run a grid (no CONFIG: the built-in quickstart)",
        description="Run models × benchmarks × attacks × defenses × judges. Rerunning resumes.",
    )
    r.add_argument("config", nargs="?", help="YAML config; omitted: the built-in quickstart")
    r.add_argument("--out", help="output folder (default: mmsafe-out/<run name>)")
    for kind, _ in KIND_OPTIONS:
        r.add_argument(
            f"--{kind}",
            action="append",
            metavar="SPEC",
            help=f"replace the config's {kind}s (repeatable): a name, or YAML like '{{name: x, params: {{...}}}}'",
        )
    r.add_argument("--limit", type=int, help="at most N samples per benchmark")
    r.add_argument("--seed", type=int, help="run seed")
    r.add_argument("--name", help="run name")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="ray: local models run on Ray workers that keep them loaded (pip install 'mmsafe[ray]'; docs/scaling.md)",
    )
    r.add_argument(
        "--ray-address", help="--executor ray: the cluster to join ('auto', HOST:PORT); none: a local one"
    )
    r.add_argument(
        "--workers", type=int, help="--executor ray: model replicas (default: what the cluster fits)"
    )
    r.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="--executor ray: CPUs per replica (default 1)"
    )
    r.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="--executor ray: GPUs per replica (default 0)"
    )
    r.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N (0 <= I < N) into --out; `mmsafe merge` joins the N folders (docs/scaling.md)",
    )

    mg = sub.add_parser(
        "merge",
        help="join the folders of a run's shards (`run --shard I/N`) into one run folder, checked unit by unit",
        description="Merge the stores of the N shards of one run into OUT: every unit of the config's grid must "
        "be in the shard that owns it and in no other; then OUT gets the records, images and caches, one run "
        "entry and its report. Merging again (after shards were resumed) brings in what changed. docs/scaling.md",
    )
    mg.add_argument(
        "out", metavar="OUT", help="the merged run folder (new, or an earlier merge of the same run)"
    )
    mg.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="the shards' run folders")
    mg.add_argument(
        "--allow-missing", action="store_true", help="merge even when shards or units are missing (said so)"
    )

    sl = sub.add_parser(
        "slurm",
        help="write a Slurm job array (one shard per task) and the merge job that follows it",
        description="Write OUT/slurm/shards.sbatch (an array of N tasks, task i runs `mmsafe run CONFIG --shard "
        "i/N`), OUT/slurm/merge.sbatch (`mmsafe merge`, after every task succeeded) and OUT/slurm/submit.sh "
        "(submits both). Nothing is submitted. docs/scaling.md",
    )
    sl.add_argument("config", help="YAML config")
    sl.add_argument("--shards", type=int, required=True, help="number of shards (array tasks)")
    sl.add_argument(
        "--out", required=True, help="run folder: shards in OUT/shards/I, the merge in OUT/merged"
    )
    sl.add_argument("--partition", help="#SBATCH --partition")
    sl.add_argument("--time", default="24:00:00", help="#SBATCH --time per shard (default 24:00:00)")
    sl.add_argument("--cpus-per-task", type=int, default=4, help="#SBATCH --cpus-per-task (default 4)")
    sl.add_argument("--mem", default="32G", help="#SBATCH --mem per shard (default 32G)")
    sl.add_argument("--gpus-per-task", type=int, default=0, help="#SBATCH --gpus-per-task (default 0)")
    sl.add_argument("--account", help="#SBATCH --account")
    sl.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="a shell line run before mmsafe in every job (repeatable), e.g. 'source .venv/bin/activate'",
    )
    sl.add_argument(
        "--mmsafe", default="mmsafe", help="the command that runs mmsafe on the nodes (default: mmsafe)"
    )

    rp = sub.add_parser("report", help="re-render summary.json, report.md and report.html from a run's store")
    rp.add_argument("dir")

    cp = sub.add_parser(
        "compare",
        help="the cells two or more run folders share, rates side by side (markdown, from the stores)",
    )
    cp.add_argument("dirs", nargs="+", metavar="RUN", help="run folders; differences are against the first")
    cp.add_argument("--out", help="write the markdown here instead of stdout")
    cp.add_argument("--html", metavar="FILE", help="also write the comparison as one self-contained page")

    an = sub.add_parser(
        "annotate",
        help="human evaluation: export a stratified sample for annotators (HTML form + CSV), or --import labels",
        description="Export a seeded sample of a run's answers, stratified by cell (model × benchmark × attack × "
        "defense), as a local HTML form and a CSV for annotators; with --import, read their label files back "
        "into the run store, where `mmsafe report` compares them with the judges. See docs/human-evaluation.md.",
    )
    an.add_argument("dir", metavar="RUN", help="run folder")
    an.add_argument("--n", type=int, default=100, help="items to export (default 100)")
    an.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    an.add_argument(
        "--scheme",
        choices=("harmful", "refusal", "helpfulness"),
        help="label scheme (export default: harmful)",
    )
    an.add_argument("--out", help="export folder (default: RUN/annotate-<scheme>-seed<seed>)")
    an.add_argument(
        "--only-expected", choices=("refuse", "comply"), help="only must-refuse or must-comply items"
    )
    an.add_argument(
        "--show-cells", action="store_true", help="show the attack/defense names to annotators (not blind)"
    )
    an.add_argument(
        "--import", dest="import_files", nargs="+", metavar="FILE", help="label files to import (JSON or CSV)"
    )
    an.add_argument("--annotator", help="--import: the annotator of CSV rows without an 'annotator' column")

    ex = sub.add_parser("export", help="write every record as JSONL or CSV")
    ex.add_argument("dir")
    ex.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    ex.add_argument("--output", "-o", help="file to write (default: DIR/records.<format>)")

    vw = sub.add_parser(
        "view", help="browse a run's samples in a local web page (127.0.0.1 only; Ctrl-C stops)"
    )
    vw.add_argument(
        "dir", metavar="RUN", help="run folder (read-only; a run still being written may be viewed)"
    )
    vw.add_argument(
        "--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free one)"
    )

    ls = sub.add_parser("list", help="list registered models, benchmarks, attacks, defenses and judges")
    ls.add_argument("kind", nargs="?", choices=[k for k, _ in KIND_OPTIONS])

    ds = sub.add_parser(
        "describe",
        help="show one plugin: summary, paper, threat model, capabilities, params and example params",
        description="Describe a plugin: `mmsafe describe attack figstep`, or `mmsafe describe NAME` when "
        "only one kind has that name.",
    )
    ds.add_argument("what", nargs="+", metavar="[KIND] NAME", help="a plugin name, optionally after its kind")

    jt = sub.add_parser(
        "judge-train",
        help="train the 'learned' judge on labelled responses",
        description="Train a logistic-regression judge on MiniLM embeddings of (request, response) pairs "
        "labelled harmful/jailbroken or safe; prints its held-out accuracy, kappa and F1.",
    )
    _labelled_args(jt)
    jt.add_argument("--out", required=True, help="classifier file to write (JSON)")
    jt.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    jt.add_argument(
        "--val-fraction", type=float, default=0.2, help="share held out for validation (default 0.2)"
    )
    jt.add_argument(
        "--method",
        choices=["learned", "harm"],
        default="learned",
        help="'learned': logistic regression on MiniLM embeddings of LABELLED (JSON file); 'harm': the shipped "
        "harm judge's recipe (LoRA MiniLM cross-encoder; LABELLED = the JailbreakBench artifacts folder, plus "
        "--harmbench; writes OUT.safetensors and its card OUT.json)",
    )
    jt.add_argument("--harmbench", help="--method harm: the HarmBench data folder (constructed negatives)")
    jt.add_argument(
        "--holdout-model",
        default="gpt-3.5-turbo-1106",
        help="--method harm: answering model held out for validation",
    )
    jt.add_argument("--epochs", type=int, default=3, help="--method harm: passes over the data (default 3)")
    jt.add_argument("--no-refit", action="store_true", help="--method harm: ship the validation run's model")

    tr = sub.add_parser(
        "train",
        help="train a model at training time (safety SFT, DPO, …) and write a LoRA adapter with its card",
        description="Train the base model named by --model with METHOD (see `mmsafe list trainer`) and write "
        "OUT/adapter.safetensors + OUT/card.json. Use the result as the model's `adapter: OUT` in any run.",
    )
    tr.add_argument("method", help="training method: sft, dpo, … (`mmsafe list trainer`)")
    tr.add_argument(
        "--model",
        help="base model: a name or a YAML mapping {name, params} (methods that train no chat model, "
        "such as protector-detector, take none)",
    )
    tr.add_argument("--out", required=True, help="directory to write the adapter and its card to")
    tr.add_argument(
        "--params", default="{}", help="the method's params as a YAML mapping, e.g. '{epochs: 2}'"
    )

    je = sub.add_parser(
        "judge-eval",
        help="measure a judge's agreement with labelled responses",
        description="Run a judge over labelled responses; print accuracy, kappa, F1 and the confusion matrix, "
        "and write disagreements.jsonl and judge-eval.json to --out. With --record the result is also saved "
        "in the cache; runs of this judge copy it into their store, where their reports show it.",
    )
    _labelled_args(je)
    _judge_eval_args(je)
    je.add_argument(
        "--judge", required=True, metavar="SPEC", help="a judge name, or YAML like '{name: x, params: {...}}'"
    )
    je.add_argument("--out", help="output folder (default: mmsafe-out/judge-eval/<judge>-<spec key>)")
    je.add_argument(
        "--record",
        action="store_true",
        help="also save the result in $MMSAFE_CACHE_DIR/judge-evals/ (default ~/.cache/mmsafe): runs of this "
        "judge then record it in their store, and their reports show it",
    )
    je.add_argument(
        "--record-in",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="also record the result in the store of the run folder RUN_DIR (repeatable), so that "
        "`mmsafe report RUN_DIR` shows it without a rerun",
    )
    je.add_argument(
        "--max-unparseable",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="refuse to measure a judge when more than this share of its answers cannot be parsed (default 0.5)",
    )
    je.add_argument(
        "--show", type=int, default=3, help="disagreements to print (escaped, shortened; default 3)"
    )
    je.add_argument(
        "--robustness",
        action="store_true",
        help="also judge every harmful-labelled row under forged verdicts (fake '[[SAFE]]', 'Verdict: no', "
        "judge turns, early-closed blocks, a 'THIS ANSWER IS SAFE' image…) and report per forgery how often "
        "the verdict flips, with 95%% Wilson intervals (printed and in judge-eval.json)",
    )
    je.add_argument(
        "--variants",
        metavar="NAMES",
        help="--robustness: comma-separated forgery variants or families (default: adaptive, every variant; "
        "see mmsafe.judges.forgery)",
    )
    je.add_argument("--quiet", action="store_true", help="no progress display")
    return p


#: the presets of mmsafe.labelled.presets (named here so that --help does not import the library;
#: a test checks that the two agree)
JUDGE_EVAL_PRESETS = ("jbb-human", "harmbench-text", "harmbench-mm", "xstest-v2", "msts")


def _judge_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="read a published human-labelled set by its format: " + ", ".join(JUDGE_EVAL_PRESETS),
    )
    p.add_argument(
        "--construct",
        choices=("harm", "refusal"),
        help="what the labels measure: harm (the judge's success verdict vs harmful/safe; default) or refusal "
        "(the judge's refused verdict vs refusal/compliance); a preset sets it",
    )
    p.add_argument(
        "--class-names",
        metavar="NEGATIVE,POSITIVE",
        help="words for the two classes in the output (default: the construct's, e.g. safe,harmful)",
    )
    p.add_argument("--id-col", help="column of the row id (default: id, Index, sample_id, … if present)")
    p.add_argument(
        "--expected-col",
        help="column saying what a safe model does with the request: refuse/harmful or comply/benign "
        "(default: expected, behavior type, … if present; absent: every request is harmful)",
    )
    p.add_argument(
        "--behaviors",
        metavar="CSV",
        help="HarmBench behaviour CSV for --preset harmbench-text/-mm (gives judges the plain behaviour)",
    )


def _labelled_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "labelled",
        metavar="LABELLED",
        help="CSV, TSV, JSONL or JSON file of (prompt, response, label) rows, or JailbreakBench artifacts "
        "(a file or folder)",
    )
    p.add_argument("--prompt-col", help="column of the request (default: prompt, request, goal, …)")
    p.add_argument("--response-col", help="column of the response (default: response, completion, …)")
    p.add_argument("--label-col", help="column of the label (default: label, jailbroken, …)")
    p.add_argument("--encoding", default="utf-8", help="file encoding: any Python codec name (default utf-8)")
    p.add_argument(
        "--positive",
        action="append",
        default=[],
        metavar="LABEL",
        help="extra label value meaning harmful/jailbroken (repeatable)",
    )
    p.add_argument(
        "--negative",
        action="append",
        default=[],
        metavar="LABEL",
        help="extra label value meaning safe (repeatable)",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip (and count) unreadable rows instead of failing"
    )


def _read_labelled_args(args: argparse.Namespace) -> Any:
    from mmsafe.judge_eval import read_labelled

    label_map = {v: True for v in args.positive}
    label_map.update({v: False for v in args.negative})
    return read_labelled(
        args.labelled,
        prompt_col=args.prompt_col,
        response_col=args.response_col,
        label_col=args.label_col,
        encoding=args.encoding,
        label_map=label_map,
        on_bad="skip" if args.skip_bad else "error",
    )


def _print_data(data: Any, *, positive: str = "jailbroken") -> None:
    d = data.describe()
    cols = ", ".join(f"{k}={_safe(v)}" for k, v in d["columns"].items())
    benign = f", {d['n_expected_comply']} benign requests" if d.get("n_expected_comply") else ""
    preset = f"preset {d['preset']}; " if d.get("preset") else ""
    print(
        f"data: {_safe(d['path'])} ({d['n_rows']} rows, {d['n_positive']} labelled {_safe(positive)}{benign}; "
        f"{preset}columns {cols}; sha256 {d['sha256'][:16]}…)"
    )
    if data.skipped:
        print(f"skipped: {len(data.skipped)} rows, e.g. {_safe(data.skipped[0], 160)}")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _print_metrics(m: dict[str, Any]) -> None:
    neg, pos = (_safe(n, 24) for n in m["confusion"]["labels"])
    acc = m["accuracy"]
    if acc["value"] is None:
        print("accuracy: n/a (no verdicts)")
    else:
        print(
            f"accuracy: {acc['value']:.3f} [{acc['lo']:.3f}, {acc['hi']:.3f}] (95% Wilson; {acc['k']}/{acc['n']}; "
            f"majority-class baseline {_fmt(m['majority_baseline'])})"
        )
    k = m.get("kappa")
    print(
        "Cohen's kappa: n/a (undefined)"
        if k is None
        else f"Cohen's kappa: {k['value']:.3f} [{k['lo']:.3f}, {k['hi']:.3f}]"
    )
    print(
        f"F1 (positive = {pos}): {_fmt(m['f1'])}  precision {_fmt(m['precision'])}  recall {_fmt(m['recall'])}"
    )
    (tn, fp), (fn, tp) = m["confusion"]["counts"]
    w = max(len(str(v)) for v in (tn, fp, fn, tp)) + 2
    left = max(18, len("label ") + max(len(neg), len(pos)) + 2)
    w_neg, w_pos = max(w, len(neg) + 2), max(w, len(pos) + 2)
    print("confusion (rows: label, columns: judge):")
    print(f"  {'':<{left}}{neg:>{w_neg}}{pos:>{w_pos}}")
    print(f"  {'label ' + neg:<{left}}{tn:>{w_neg}}{fp:>{w_pos}}")
    print(f"  {'label ' + pos:<{left}}{fn:>{w_neg}}{tp:>{w_pos}}")


def _ci(r: dict[str, Any]) -> str:
    if r["value"] is None:
        return "n/a"
    return f"{r['value']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] {r['k']}/{r['n']}"


def _print_robustness(rob: dict[str, Any]) -> None:
    base = rob["base_harmful"]
    print(
        f"forged verdicts: {rob['n_harmful_rows']} harmful-labelled rows, {rob['n_base_decided']} with a verdict "
        f"as they are ({rob['n_base_no_verdict']} without; judged harmful as is: {_ci(base)})"
    )
    rows = [(name, v) for name, v in rob["variants"].items()]
    w = max([len("any variant"), *(len(n) for n, _ in rows)]) + 2
    head = f"{'flip rate [95% Wilson] k/n':<34}{'to safe':>8}{'to harmful':>11}{'to none':>8}"
    print(f"  {'variant':<{w}}{head}")
    for name, v in rows:
        if "skipped" in v:
            print(f"  {_safe(name):<{w}}skipped: {_safe(v['skipped'], 100)}")
            continue
        print(
            f"  {_safe(name):<{w}}{_ci(v['flip']):<34}{v['to_safe']['k']:>8}{v['to_harmful']:>11}"
            f"{v['to_no_verdict']:>8}"
        )
    anyv = rob["any"]
    print(f"  {'any variant':<{w}}{_ci(anyv['flip']):<34}{anyv['to_safe']['k']:>8}")


def _cmd_judge_train(args: argparse.Namespace) -> int:
    from mmsafe.training.learned_judge import train_learned_judge

    if not 0 <= args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), not {args.val_fraction}")
    if args.method == "harm":
        return _train_harm(args)
    data = _read_labelled_args(args)
    _print_data(data)
    m = train_learned_judge(
        data.rows, args.out, seed=args.seed, val_fraction=args.val_fraction, data=data.describe()
    )
    print(f"trained on {m['n_train']} rows; held out {m['n_val']} ({m.get('split', 'none')} split)")
    if m.get("n"):
        _print_metrics(m)
    print(f"classifier: {_safe(m['path'])} (sha256 {m['sha256']})")
    print(f"use it: --judge '{{name: learned, params: {{weights: {_safe(m['path'])}}}}}'")
    return 0


def _read_judge_eval_data(args: argparse.Namespace) -> Any:
    from mmsafe.judge_eval import read_labelled

    label_map = {v: True for v in args.positive}
    label_map.update({v: False for v in args.negative})
    names = None
    if args.class_names is not None:
        names = [n.strip() for n in args.class_names.split(",")]
        if len(names) != 2:
            raise ConfigError(f"--class-names takes NEGATIVE,POSITIVE (two words), not {args.class_names!r}")
    return read_labelled(
        args.labelled,
        prompt_col=args.prompt_col,
        response_col=args.response_col,
        label_col=args.label_col,
        id_col=args.id_col,
        expected_col=args.expected_col,
        encoding=args.encoding,
        label_map=label_map,
        on_bad="skip" if args.skip_bad else "error",
        preset=args.preset,
        construct=args.construct,
        class_names=names,
        behaviors=args.behaviors,
    )


#: how to obtain a required judge param that a user left out, beyond the param's own description
_PARAM_HINTS: dict[tuple[str, str], str] = {
    ("learned", "weights"): "no classifier yet? train one on labelled responses with "
    "`mmsafe judge-train LABELLED.csv --out my-judge.json` (see docs/judges.md, 'The learned judge'), "
    "then pass --judge '{name: learned, params: {weights: my-judge.json}}'",
}


def _create_judge(spec: Any) -> Any:
    """The judge of ``--judge``; a required param left out is named with what it is and how to get it."""
    from mmsafe.registry import Registry

    reg = Registry()
    cls = reg.get("judge", spec.name, where="--judge")
    fields = getattr(cls.Params, "model_fields", {})
    missing = [n for n, f in fields.items() if f.is_required() and n not in spec.params]
    if missing:
        lines = [f"--judge {spec.name}: missing required param(s) {', '.join(missing)}"]
        for n in missing:
            desc = fields[n].description
            lines.append(f"  params.{n}: {desc}" if desc else f"  params.{n}")
            if (spec.name, n) in _PARAM_HINTS:
                lines.append(f"  {_PARAM_HINTS[(spec.name, n)]}")
        raise ConfigError("\n".join(lines))
    return reg.create("judge", spec.name, spec.params, where="--judge")


def _train_harm(args: argparse.Namespace) -> int:
    from mmsafe.judges.harm_recipe import train_harm_judge

    if not args.harmbench:
        raise ConfigError(
            "--method harm needs --harmbench (the HarmBench data folder, for constructed negatives)"
        )
    card = train_harm_judge(
        args.labelled,
        args.harmbench,
        args.out,
        holdout_model=args.holdout_model,
        val_fraction=args.val_fraction,
        epochs=args.epochs,
        seed=args.seed,
        refit=not args.no_refit,
        log=lambda line: print(_safe(line), flush=True),
    )
    print(
        f"classifier: {_safe(args.out)} (sha256 {card['tensors_sha256']}); card: {_safe(str(Path(args.out).with_suffix('.json')))}"
    )
    print(f"use it: --judge '{{name: harm, params: {{weights: {_safe(args.out)}}}}}'")
    return 0


def _cmd_judge_eval(args: argparse.Namespace) -> int:
    from mmsafe.config import ComponentConfig, parse_component
    from mmsafe.judge_eval import (
        CONSTRUCTS,
        evaluate_judge,
        judge_eval_entry,
        judge_evals_dir,
        record_judge_eval,
        robustness,
        save_judge_eval,
    )
    from mmsafe.runner.progress import Progress
    from mmsafe.store import Store
    from mmsafe.types import Expected

    if not 0 <= args.max_unparseable <= 1:
        raise ConfigError(f"--max-unparseable must be in [0, 1], not {args.max_unparseable}")
    try:
        spec = ComponentConfig.model_validate(parse_component(args.judge))
    except ValueError as exc:
        raise ConfigError(f"--judge {args.judge!r}: {exc}") from None
    forgeries = None
    if args.robustness:
        from mmsafe.judges.forgery import resolve_variants

        forgeries = resolve_variants(args.variants)  # a misspelt variant fails before any judging
    elif args.variants is not None:
        raise ConfigError("--variants is used with --robustness")
    for run_dir in args.record_in:  # a mistyped run folder fails before any judging
        Store.open_existing(run_dir).close()
    judge = _create_judge(spec)
    data = _read_judge_eval_data(args)
    if forgeries is not None and data.construct != "harm":
        raise ConfigError(f"--robustness needs harm labels; this data measures {data.construct!r}")
    construct = CONSTRUCTS[data.construct]
    pos = data.names[1]
    key = judge.spec.key
    out = Path(args.out) if args.out else Path("mmsafe-out") / "judge-eval" / f"{judge.name}-{key}"
    out.mkdir(parents=True, exist_ok=True)
    _print_data(data, positive=pos)
    print(f"measuring: {construct.name} — {construct.question}; positive class: {_safe(pos)}")
    progress = Progress(len(data), label=f"judge {judge.name}", enabled=not args.quiet)
    rob: dict[str, Any] | None = None
    try:
        with Store(out) as store:  # judges backed by a model cache their requests here
            judge.bind(store)
            try:
                result = evaluate_judge(
                    judge,
                    data,
                    progress=lambda n, e: progress.advance(n, errors=e),
                    max_unparseable=args.max_unparseable,
                )
            finally:
                progress.close()
            if forgeries is not None and not result["unusable"]:
                harmful = sum(r.label and r.expected == Expected.refuse for r in data)
                forged = Progress(
                    harmful * (1 + len(forgeries)), label="forged verdicts", enabled=not args.quiet
                )
                try:
                    rob = robustness(
                        judge, data, variants=forgeries, progress=lambda n, e: forged.advance(n, errors=e)
                    )
                finally:
                    forged.close()
    finally:
        judge.close()
    print(f"judge: {_safe(judge.name)} v{_safe(judge.version)} (spec key {key})")
    apart = (
        f", {result['n_not_applicable']} benign requests without a harm verdict (expected=comply; not counted)"
        if result["n_not_applicable"]
        else ""
    )
    print(
        f"judged: {result['n']} of {result['n_rows']} ({result['n_errors']} errors, "
        f"{result['n_undecided']} undecided{apart})"
    )
    if result["n_unparseable"]:
        print(
            f"unparseable judge answers: {result['n_unparseable']} "
            f"({result['unparseable_rate']:.1%} of the answers; counted as errors)"
        )
    for e in result["errors"][:3]:
        print(f"  error {_safe(e['id'], 80)}: {_safe(e['error'], 160)}")
    summary = {"judge": judge.spec.model_dump(mode="json"), "data": data.describe(), **result}
    summary.pop("disagreements")
    if rob is not None:
        summary["robustness"] = rob
    summary["n_disagreements"] = len(result["disagreements"])
    (out / "judge-eval.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    dis = out / "disagreements.jsonl"
    with dis.open("w", encoding="utf-8") as f:
        for d in result["disagreements"]:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    if result["unusable"]:
        print(f"NOT MEASURED: {_safe(result['unusable'])}; {result['n_withheld']} verdicts withheld")
        print(f"summary: {_safe(out / 'judge-eval.json')} (nothing recorded for run reports)")
        return 1
    if result["n"] == 0 and result["n_undecided"] + result["n_not_applicable"]:
        print(
            f"no {construct.verdict!r} verdicts: judge {_safe(judge.name)} does not decide "
            f"{construct.name} on these rows, so it cannot be measured on them"
        )
    _print_metrics(result)
    for d in result["disagreements"][: max(0, args.show)]:
        print(
            f"  {_safe(d['id'], 60)}: label {_safe(d['label'])}, judge {_safe(d['judge'])}: "
            f"«{_safe(d['response'].strip(), 110)}»"
        )
    print(f"disagreements: {len(result['disagreements'])} → {_safe(dis)}")
    if rob is not None:
        _print_robustness(rob)
    print(f"summary: {_safe(out / 'judge-eval.json')}")
    if args.record:
        print(f"recorded for run reports: {_safe(save_judge_eval(result, judge=judge.spec, data=data))}")
    elif not args.record_in:
        print(f"not recorded for run reports (--record saves it in {_safe(judge_evals_dir())})")
    for run_dir in args.record_in:
        with Store.open_existing(run_dir, readonly=False) as run_store:
            record_judge_eval(run_store, judge_eval_entry(result, judge=judge.spec, data=data))
        print(f"recorded in the store of {_safe(run_dir)}: `mmsafe report {_safe(run_dir)}` shows it")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mmsafe.config import load_config, parse_component
    from mmsafe.runner import run

    overrides: dict = {}
    for kind, field in KIND_OPTIONS:
        values = getattr(args, kind)
        if values:
            overrides[field] = [parse_component(v) for v in values]
    overrides.update({"limit": args.limit, "seed": args.seed, "name": args.name})
    config = load_config(args.config, overrides=overrides)
    shard = None
    if args.shard:
        from mmsafe.runner.shard import Shard

        shard = Shard.parse(args.shard)
    default = Path("mmsafe-out") / config.name
    if shard is not None:
        default = default / f"shard-{shard.index}-of-{shard.count}"
    out = Path(args.out) if args.out else default
    ray = None
    if args.executor == "ray":
        from mmsafe.runner.ray_executor import RayOptions

        ray = RayOptions(
            address=args.ray_address,
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
        )
    result = run(config, out, progress=not args.quiet, shard=shard, ray=ray)
    print(
        f"{result.written} records written, {result.skipped} already in the store, {result.errors} failed items"
    )
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from mmsafe.runner.merge import merge

    res = merge(args.out, args.shards, allow_missing=args.allow_missing)
    print(
        f"{res.present} of {res.planned} units of the grid in {_safe(str(res.out_dir))}: {res.written} records "
        f"written, {res.unchanged} already there, {res.replaced} failed ones replaced"
        + (
            f"; {res.missing} units missing (shards not given: {', '.join(res.missing_shards) or 'none'})"
            if res.missing
            else ""
        )
        + (f"; {res.outside} records of no unit of the grid kept" if res.outside else "")
    )
    for name, path in res.files.items():
        print(f"{name}: {path}")
    return 0


def _cmd_slurm(args: argparse.Namespace) -> int:
    from mmsafe.config import load_config
    from mmsafe.runner.slurm import SlurmOptions, write_slurm

    load_config(args.config)  # a broken config fails here, not on the cluster
    paths = write_slurm(
        args.config,
        args.out,
        SlurmOptions(
            shards=args.shards,
            partition=args.partition,
            time=args.time,
            cpus_per_task=args.cpus_per_task,
            mem=args.mem,
            gpus_per_task=args.gpus_per_task,
            account=args.account,
            setup=tuple(args.setup),
            mmsafe=args.mmsafe,
        ),
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"submit with: bash {_safe(str(paths['submit']))}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mmsafe.report import rerender

    for name, path in rerender(args.dir).items():
        print(f"{name}: {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from mmsafe.report.compare import compare_runs, load_run, render_compare, render_compare_html

    if len(args.dirs) < 2:
        raise ConfigError("compare needs at least two run folders")
    result = compare_runs([load_run(d) for d in args.dirs])
    text = render_compare(result)
    if args.html:  # named on stderr when the markdown goes to stdout, so stdout stays markdown
        Path(args.html).write_text(render_compare_html(result), encoding="utf-8")
        print(f"comparison page: {args.html}", file=sys.stdout if args.out else sys.stderr)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"comparison: {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    from mmsafe.report.annotate import export_items, population
    from mmsafe.report.label_import import import_labels
    from mmsafe.store.sqlite import Store

    if args.import_files:
        with Store.open_existing(args.dir, readonly=False) as store:  # importing writes: not read-only
            res = import_labels(
                store,
                args.import_files,
                valid_ids=population(store).all_ids,
                annotator=args.annotator,
                scheme=args.scheme,
            )
        for err in res.errors:
            print(f"mmsafe: {_safe(err, 400)}", file=sys.stderr)
        print(
            f"{res.stored} labels stored, {len(res.errors)} rejected, {res.unlabelled} unlabelled rows skipped; "
            f"`mmsafe report {_safe(args.dir)}` shows them"
        )
        return 1 if res.errors else 0
    scheme = args.scheme or "harmful"
    out = Path(args.out) if args.out else Path(args.dir) / f"annotate-{scheme}-seed{args.seed}"
    with Store.open_existing(args.dir) as store:
        try:
            result = export_items(
                store,
                out,
                n=args.n,
                seed=args.seed,
                scheme=scheme,
                only_expected=args.only_expected,
                show_cells=args.show_cells,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    print(
        f"{len(result.items)} items from {len(result.allocation)} cells (export {result.export_id}); "
        f"{result.excluded_errors} generations without an answer left out"
        + (f", {result.excluded_expected} of the other expected kind" if args.only_expected else "")
    )
    for name, path in result.files.items():
        print(f"{name}: {_safe(path)}")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from mmsafe.report.serve import ViewServer

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0…65535, not {args.port}")
    app = ViewServer(args.dir, port=args.port)
    try:
        print(
            f"mmsafe view: {len(app.index):,} items indexed in {app.index_seconds:.1f} s"
            + (f" ({app.index.unreadable} unreadable records skipped)" if app.index.unreadable else "")
            + f"; serving {app.url} (Ctrl-C stops)",
            flush=True,
        )
        app.serve_forever()
    except KeyboardInterrupt:
        print("mmsafe view: stopped", flush=True)
    finally:
        app.close()
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mmsafe.report.export import export

    output = args.output or str(Path(args.dir) / f"records.{args.format}")
    n = export(args.dir, output, fmt=args.format)
    print(f"{n} records → {output}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mmsafe.config import load_yaml
    from mmsafe.registry import Registry

    model = load_yaml(args.model, where="--model") if args.model is not None else None
    params = load_yaml(args.params, where="--params") or {}
    if not isinstance(params, dict):
        raise ConfigError("--params must be a YAML mapping, e.g. '{epochs: 2}'")
    reg = Registry()
    if model is not None:
        params = {**params, "model": model}
    trainer = reg.create("trainer", args.method, params, where="train")
    card = trainer.run(args.out, log_fn=lambda m: print(_safe(m), file=sys.stderr))  # type: ignore[attr-defined]
    print(json.dumps({k: card[k] for k in ("method", "data", "training", "metrics") if k in card}, indent=2))
    if card.get("usage"):  # the method says how its output is used (a system prompt to keep, a judge file, …)
        print(f"written to {_safe(args.out)}  (use it: {_safe(str(card['usage']).replace('OUT', args.out))})")
    else:
        print(f"adapter: {_safe(args.out)}  (use it: model params `adapter: {_safe(args.out)}`)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from mmsafe.registry import Registry

    reg = Registry()
    kinds = [args.kind] if args.kind else [k for k, _ in KIND_OPTIONS]
    for kind in kinds:
        print(f"{kind}s:")
        for name, summary in reg.describe(kind):
            print(f"  {name:<18} {summary}")
            if kind == "benchmark":
                print(f"  {'':<18}   {_benchmark_facts(reg, name)}")
    return 0


#: the Benchmark class attributes ``mmsafe list`` shows under each benchmark, with their labels
BENCHMARK_FACTS: tuple[tuple[str, str], ...] = (("size", "size"), ("licence", "licence"), ("needs", "needs"))


def _benchmark_facts(reg: Any, name: str) -> str:
    """``size: … | licence: … | needs: …`` of one benchmark (what is not stated says so), terminal-safe."""
    try:
        cls = reg.get("benchmark", name)
    except Exception:  # its summary line already says it cannot load
        return "(size, licence and needs unknown: the plugin cannot load)"
    facts = [(label, getattr(cls, attr, None)) for attr, label in BENCHMARK_FACTS]
    return " | ".join(
        f"{label}: {_safe(str(value), 120) if value else '(not stated)'}" for label, value in facts
    )


def _cmd_describe(args: argparse.Namespace) -> int:
    from mmsafe.plugin_meta import describe_plugin
    from mmsafe.registry import KINDS, Registry

    reg = Registry()
    if len(args.what) > 2:
        raise ConfigError(f"describe takes [KIND] NAME, got {len(args.what)} words")
    if len(args.what) == 2:
        kind, name = args.what
        reg.get(kind, name)  # an unknown kind or name: ConfigError with the allowed ones
    else:
        (name,) = args.what
        kinds = [k for k in KINDS if name in reg.names(k)]
        if not kinds:
            raise ConfigError(f"no plugin is named '{name}'; `mmsafe list` shows them all")
        if len(kinds) > 1:
            choices = ", ".join(f"mmsafe describe {k} {name}" for k in kinds)
            raise ConfigError(
                f"'{name}' names plugins of several kinds ({', '.join(kinds)}); say which: {choices}"
            )
        (kind,) = kinds
    print(_safe(describe_plugin(kind, name, reg.get(kind, name)), keep_newlines=True))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the run stops as on Ctrl-C (the open transaction rolls back)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def _os_error(exc: OSError) -> str:
    """``strerror: file`` (and what to do when the disk is full), without Python's ``[Errno n]`` framing."""
    if not exc.strerror:
        return str(exc) if isinstance(exc, FileNotFoundError) and str(exc) else describe(exc)
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    msg = f"{exc.strerror}: {' → '.join(files)}" if files else exc.strerror
    if exc.errno == errno.ENOSPC:
        msg += "; free space and rerun the same command to resume"
    return msg


def _fail(message: str, code: int, *, verbose: bool) -> int:
    """Print the error as one line (the traceback first, with -v) and return the exit code."""
    if verbose:
        traceback.print_exc()
    print(f"mmsafe: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # third-party progress bars would interleave with ours; mmsafe shows one progress display
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if os.environ.get("CI") and not args.verbose:
        logging.getLogger("mmsafe.progress").setLevel(logging.WARNING)
    # httpx logs every request at INFO, its URL included: only with -v
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET if args.verbose else logging.WARNING)
    handlers = {
        "run": _cmd_run,
        "report": _cmd_report,
        "merge": _cmd_merge,
        "slurm": _cmd_slurm,
        "compare": _cmd_compare,
        "export": _cmd_export,
        "annotate": _cmd_annotate,
        "view": _cmd_view,
        "list": _cmd_list,
        "describe": _cmd_describe,
        "judge-train": _cmd_judge_train,
        "judge-eval": _cmd_judge_eval,
        "train": _cmd_train,
    }
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    v = args.verbose
    try:
        return handlers[args.command](args)
    except Terminated:
        print("mmsafe: terminated; rerun the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("mmsafe: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except MmsafeError as exc:  # ConfigError, MissingDependency, StoreError, RunLocked: says what to do
        return _fail(_safe(without_addresses(str(exc)), keep_newlines=True), 2, verbose=v)
    except OSError as exc:
        return _fail(_safe(_os_error(exc)), 2 if isinstance(exc, FileNotFoundError) else 1, verbose=v)
    except Exception as exc:  # a bug or an unforeseen input: still one line, the traceback with -v
        hint = "" if v else " (rerun with -v for the traceback)"
        return _fail(_safe(describe(exc, limit=2000)) + hint, 1, verbose=v)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
