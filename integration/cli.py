"""The `ecgbridge` command.

    ecgbridge serve [--worker]        MLLP + HTTP listeners (and a worker, for one machine)
    ecgbridge worker [--queues all|triage|explain]  a Celery worker for queued ECGs
    ecgbridge analyze FILE... [--json] [--picture DIR] [--no-explain]
                                      analyse files offline and write their reports
    ecgbridge train                   train the model on PTB-XL folds 1-8 (select on fold 9)
    ecgbridge evaluate --data DIR [--folds 9] --out FILE.json
    ecgbridge demo                    run the whole flow on embedded defaults
    ecgbridge doctor                  check every configured dependency
    ecgbridge backfill DIR [--rate N] push an archive through the queue (resumable)
    ecgbridge audit verify|export|prove|consistency ...
    ecgbridge fairness report [--since 7d] [--json]   per-subgroup fairness monitoring

Exit codes: 0 success, 1 failure, 2 bad input (the message names the file and the field).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from inference.record import EcgRecord
from integration.errors import InputFileError
from integration.settings import Settings, get_settings

log = logging.getLogger("integration")

DEFAULT_DATA = Path("../shared/data/ptbxl")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecgbridge", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the MLLP and HTTP listeners")
    s.add_argument("--worker", action="store_true", help="also run a worker process")

    w = sub.add_parser("worker", help="run a Celery worker")
    w.add_argument(
        "--queues",
        choices=("all", "triage", "explain"),
        default="all",
        help="triage: analysis, ED alert, preliminary report (keep some workers on it alone "
        "so alerts never wait); explain: explanations and the final report; all: both",
    )

    a = sub.add_parser("analyze", help="analyse ECG files offline and write their reports")
    a.add_argument("files", nargs="+", type=Path)
    a.add_argument("--json", action="store_true", help="one JSON object per input line")
    a.add_argument(
        "--picture",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the rendered ECG (PNG, attributions shaded, counterfactual overlaid) here",
    )
    a.add_argument(
        "--no-explain",
        action="store_true",
        help="triage only: no attributions, counterfactual, rule or measurements",
    )

    t = sub.add_parser("train", help="train the model (folds 1-8, select on fold 9)")
    t.add_argument("--data", type=Path, default=DEFAULT_DATA)
    t.add_argument("--out", type=Path, default=Path("inference/weights"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument(
        "--site-labels",
        type=Path,
        default=None,
        help="CSV of a hospital's angiography labels (ECG file, LAD/LCx/RCA stenosis %%): "
        "fine-tune the stenosis head, reported only if its validation passes",
    )
    t.add_argument("--site", default=None, help="site name for the fine-tuned weights")

    e = sub.add_parser("evaluate", help="evaluate the shipped model on a PTB-XL-layout folder")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--folds", type=str, default=None, help="comma-separated, e.g. 9")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--bootstrap", type=int, default=1000)

    sub.add_parser("doctor", help="check every configured dependency, in plain words")

    b = sub.add_parser("backfill", help="push an archive of ECG files through the queue")
    b.add_argument("dir", type=Path)
    b.add_argument("--rate", type=float, default=5.0, help="ECGs per second (default 5)")
    b.add_argument("--state", type=Path, default=None, help="resume file (default in DIR)")

    au = sub.add_parser(
        "audit", help="verify, export or prove the audit log (ecgbridge audit verify --help)"
    )
    au.add_argument("audit_args", nargs=argparse.REMAINDER)

    fa = sub.add_parser("fairness", help="fairness monitoring (ecgbridge fairness report --help)")
    fa.add_argument("fairness_args", nargs=argparse.REMAINDER)

    d = sub.add_parser("demo", help="send real sample ECGs through the running service")
    d.add_argument("--keep", action="store_true", help="leave ./var/demo in place")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pydantic import ValidationError

    from integration.observability import setup_process

    try:
        # structured logs (JSON for serve/worker) and traces: integration/observability.py
        setup_process(args.command, verbose=args.verbose)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"ecgbridge: error: {problems}", file=sys.stderr)
        return 2
    settings = get_settings()
    try:
        if args.command in ("serve", "worker"):  # audit config.changed / config.loaded
            from integration.audit.config_events import record_start

            record_start(args.command)
        if args.command == "serve":
            asyncio.run(_serve(settings, args.worker))
            return 0
        if args.command == "worker":
            return _worker(settings, args.queues)
        if args.command == "analyze":
            return _analyze(
                settings,
                args.files,
                as_json=args.json,
                picture_dir=args.picture,
                explain=settings.explain and not args.no_explain,
            )
        if args.command == "train" and args.site_labels is not None:
            return _site_finetune(args.site_labels, args.out, args.site, args.seed)
        if args.command == "train":
            return _train(args.data, args.out, args.seed, args.epochs)
        if args.command == "evaluate":
            return _evaluate(args.data, args.folds, args.out, args.bootstrap)
        if args.command == "doctor":
            from integration.doctor import run_doctor

            checks = run_doctor(settings)
            for check in checks:
                print(check.line())
            return 0 if all(c.ok for c in checks) else 1
        if args.command == "backfill":
            from integration.backfill import backfill

            summary = backfill(
                settings,
                args.dir,
                rate_per_s=args.rate,
                state_file=args.state,
                progress=sys.stderr,
            )
            print(summary.text())
            return 0 if summary.complete else 1
        if args.command == "audit":
            from integration.audit.cli import cli_main

            return cli_main(args.audit_args)
        if args.command == "fairness":
            from integration.fairness_report import cli_main as fairness_main

            return fairness_main(args.fairness_args, settings=settings)
        if args.command == "demo":
            from integration.demo import run_demo

            return run_demo(keep=args.keep)
    except InputFileError as exc:
        print(f"ecgbridge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1  # pragma: no cover - argparse rejects unknown commands


async def _serve(settings: Settings, with_worker: bool) -> None:
    from integration.service import serve

    await serve(settings, with_worker=with_worker)


def _worker(settings: Settings, queues: str = "all") -> int:
    from integration.celery_app import EXPLAIN_QUEUE, QUEUE, create_app
    from integration.tasks import register

    names = {"all": [QUEUE, EXPLAIN_QUEUE], "triage": [QUEUE], "explain": [EXPLAIN_QUEUE]}
    if queues == "explain":
        # On a machine shared with triage workers, explanations yield the CPU to triage:
        # the ED alert must not wait for a core (the child processes inherit the niceness).
        os.nice(10)
    from inference.errors import DeviceUnavailableError

    try:
        device = settings.inference_device()
    except DeviceUnavailableError as exc:
        print(f"ecgbridge: error: {exc}", file=sys.stderr)
        return 2
    # Batching (or cuda): one process, a thread per batch slot, one shared model whose calls
    # are batched (`inference.batching`); acks_late and prefetch 1 per thread as before.
    pool, concurrency = settings.worker_pool(device, queues=queues)
    log.info(
        "worker on %s: %s pool x %d, batches of up to %d ECGs, wait %g ms",
        device,
        pool,
        concurrency,
        settings.effective_batch_max(device),
        settings.effective_batch_wait_ms(device),
    )
    app = create_app(settings)
    app.conf.worker_pool = pool  # the tasks preload the model in a thread pool's process
    register(app, settings)
    app.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            "-Q",
            ",".join(names[queues]),
            "-n",
            f"{queues}-%i@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def _analyze(
    settings: Settings,
    files: list[Path],
    *,
    as_json: bool,
    picture_dir: Path | None,
    explain: bool,
) -> int:
    from inference.analyzer import Analyzer
    from integration.files import read_ecg_file
    from integration.pipeline import analyse_and_write
    from integration.tasks import make_explaining, make_writer

    inputs = [ecg for path in files for ecg in read_ecg_file(path)]
    analyzer = Analyzer.load(
        device=settings.inference_device(), group_thresholds=settings.fairness_group_thresholds
    )
    report_png = settings.report_png or picture_dir is not None
    explaining = make_explaining(
        settings.model_copy(update={"explain": explain, "report_png": report_png}), analyzer
    )
    if picture_dir is not None:
        picture_dir.mkdir(parents=True, exist_ok=True)
    writer = make_writer(settings)
    try:
        for ecg in inputs:
            done = analyse_and_write(
                ecg.record,
                idem_key=ecg.idem_key,
                analyzer=analyzer,
                writer=writer,
                now=datetime.now(UTC),
                explaining=explaining,
            )
            result, written = done.result, done.written
            source = str(ecg.path) + (f"#{ecg.entry}" if ecg.entry else "")
            if picture_dir is not None and done.picture_png is not None:
                name = ecg.path.name + (f"-{ecg.entry}" if ecg.entry else "")
                (picture_dir / f"{_safe_name(name)}.png").write_bytes(done.picture_png)
            if as_json:
                out = {"source": source, **result.to_json(), "report": written.report_ref}
                print(json.dumps(out), flush=True)
            else:
                tri = result.triage
                verdict = (
                    "not analysed: " + "; ".join(result.quality.problems)
                    if tri is None
                    else f"MI/injury p={tri.probability:.3f} "
                    f"({'POSITIVE' if tri.positive else 'negative'})"
                )
                print(f"{source}: {verdict}  -> {written.report_ref}")
    finally:
        writer.close()
    if not as_json:
        print(f"reports written to {written.location}" if inputs else "no ECGs found")
    return 0


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _train(data: Path, out: Path, seed: int, epochs: int | None) -> int:
    from inference.train import train

    if epochs is None:
        report = train(data_dir=data, out_dir=out, seed=seed)
    else:
        report = train(data_dir=data, out_dir=out, seed=seed, epochs=epochs)
    print(report)
    return 0


def _site_finetune(labels: Path, out: Path, site: str | None, seed: int) -> int:
    from inference.site_finetune import SiteLabelError, finetune_from_csv
    from integration.files import read_ecg_file

    def read_one(path: Path) -> EcgRecord:
        path = path if path.is_absolute() else labels.parent / path
        return read_ecg_file(path)[0].record

    try:
        report = finetune_from_csv(labels, read_ecg=read_one, out_dir=out, site=site, seed=seed)
    except SiteLabelError as exc:
        raise InputFileError(str(exc), path=str(labels)) from exc
    print(report)
    return 0


def _evaluate(data: Path, folds: str | None, out: Path, n_bootstrap: int) -> int:
    from inference.evaluate import evaluate

    if not (data / "signals_500hz_uv.npz").exists() or not (data / "records.csv").exists():
        raise InputFileError(
            "expected signals_500hz_uv.npz and records.csv (the PTB-XL layout)", path=str(data)
        )
    fold_list = None if not folds else [int(f) for f in folds.split(",")]
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".reliability.png")
    report = evaluate(
        data_dir=data, folds=fold_list, n_bootstrap=n_bootstrap, reliability_png_path=png
    )
    out.write_text(json.dumps(report, indent=2))
    for task, t in report["tasks"].items():
        if t.get("auroc") is None or t.get("ci95") is None:
            print(f"{task:9s} AUROC undefined (one class only)  n_pos {t['n_pos']}/{report['n']}")
            continue
        print(
            f"{task:9s} AUROC {t['auroc']:.3f} [{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}]  "
            f"sens {t['sensitivity']:.2f} spec {t['specificity']:.2f}  "
            f"n_pos {t['n_pos']}/{report['n']}"
        )
    gaps = report["fairness"]
    print(
        "fairness (MI): "
        + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in gaps.items())
    )
    flagged = report["subgroups"]["flagged"]
    print(
        "subgroups with sensitivity > 0.05 below overall: "
        + (", ".join(flagged) if flagged else "none")
    )
    print(f"written to {out} (reliability curves: {png})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
