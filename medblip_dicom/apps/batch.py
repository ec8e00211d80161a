"""``medblip batch INPUT... --model M --out DIR``: caption an archive on Ray Data, with a results table."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, say_error
from medblip_dicom.apps.options import (
    add_frame, add_generation, add_model, add_selection, generation_keywords, generation_settings, iter_inputs,
    select_config,
)

BATCH_EXAMPLE = """\
examples:
  medblip batch /archive/export --model ./my-blip-model --out /archive/reports
  medblip batch files.parquet --model ./my-blip-model --out /shared/reports --ray-address auto \\
      --num-gpus-per-worker 1 --batch-size 64
  medblip batch files.csv --model ./my-blip-model --out reports/ --resume reports/results.parquet

INPUT is a folder (searched recursively), a file, or a manifest: a .csv, .jsonl or .parquet table with
a `path` column (paths or URIs every Ray worker can read; relative paths are relative to the
manifest). List millions of files into a manifest once rather than walking folders on every run.
Without --ray-address a local Ray starts in this process (all cores); with --ray-address auto or
HOST:PORT the job joins that cluster. Selection and one caption per series work as in `medblip
caption` (--per-series, --select). The results table (--results, default OUT/results.parquet, or
.csv) has exactly one row per input file; SRs are written once, at <SR SOPInstanceUID>.dcm, and a
rerun never rewrites one. --resume TABLE skips the inputs that TABLE already holds. One
SOPInstanceUID, one report: a later file of a UID is skipped (kind Duplicate, naming the first); a
different image under a UID already used makes the exit status 1.
"""


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``medblip batch``."""
    cmd = sub.add_parser(
        "batch", help="caption an archive on Ray Data (local or a cluster) and write a results table",
        description="Caption DICOM files at archive scale on Ray Data; one SR per captioned image and "
        "one results-table row per input file.",
        epilog=BATCH_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, files, or .csv/.jsonl/.parquet manifests")
    add_model(cmd, note="every Ray worker must be able to read it; each caption actor runs it on --device")
    cmd.add_argument("--out", "-o", type=Path, required=True, help="folder for the SR files (shared by all workers)")
    cmd.add_argument("--results", type=Path, default=None, help="results table (.parquet or .csv; "
                     "default OUT/results.parquet)")
    cmd.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="join a Ray cluster: auto, or the head's HOST:PORT (default: start a local Ray)")
    cmd.add_argument("--num-gpus-per-worker", type=float, default=0.0, metavar="G",
                     help="GPUs per caption actor (default 0: CPU); one actor per G GPUs of the cluster")
    cmd.add_argument("--caption-workers", type=int, default=None, metavar="N",
                     help="caption actors (default: one per G GPUs, or 1 on CPU)")
    cmd.add_argument("--cpus-per-worker", type=float, default=None, metavar="C",
                     help="CPUs (torch threads) per caption actor (default 1 with a GPU, else half the CPUs)")
    cmd.add_argument("--prepare-workers", type=int, default=None, metavar="N",
                     help="parallel prepare tasks (read, decode, window; default: the CPUs left)")
    add_generation(cmd)
    add_frame(cmd)
    add_selection(cmd)
    cmd.add_argument("--resume", type=Path, default=None, metavar="TABLE",
                     help="skip the inputs already in this results table (their rows are carried over)")
    add_verbosity(cmd)
    cmd.set_defaults(func=cmd_batch, quick_exit=True)


def _inputs(raw: list[str]) -> list[tuple[str, bool]]:
    """``(path, named)`` for every input: folders walked, manifests read; named = a file given directly."""
    from medblip_dicom.integrations.batch.manifest import is_manifest, read_manifest

    out: list[tuple[str, bool]] = []
    for item in raw:
        if is_manifest(item):
            out.extend((p, False) for p in read_manifest(item))
        else:
            if not Path(item).exists():
                raise ValueError(f"{item}: no such file or folder")
            out.extend(iter_inputs([item]))
    return out


def cmd_batch(args: argparse.Namespace) -> int:
    """Run ``medblip batch``."""
    try:
        from medblip_dicom.integrations.batch.job import token_auth_env
    except ImportError:  # pandas missing: said below
        pass
    else:
        token_auth_env(args.ray_address)
    for module in ("ray", "pandas", "pyarrow"):
        try:
            importlib.import_module(module)
        except ImportError:
            say_error("batch", f"this needs {module}: install the extra with pip install 'medblip-dicom[batch]'")
            return EXIT_USAGE
    from medblip_dicom.integrations.batch.job import BatchConfig
    from medblip_dicom.integrations.batch.manifest import ManifestError

    results = args.results or args.out / "results.parquet"
    try:
        if results.suffix.lower() not in (".parquet", ".csv"):
            raise ValueError(f"--results {results}: must end in .parquet or .csv")
        generation_settings(args)  # checked here, before Ray starts
        config = BatchConfig(model=args.model, output_dir=args.out, batch_size=args.batch_size, device=args.device,
                             dtype=args.dtype, frame=args.frame, generation=generation_keywords(args),
                             select=select_config(args),
                             num_gpus_per_worker=args.num_gpus_per_worker, caption_workers=args.caption_workers,
                             cpus_per_worker=args.cpus_per_worker, prepare_workers=args.prepare_workers,
                             resume=args.resume, prompt=args.prompt)
        inputs = _inputs(args.inputs)
        if args.resume is not None:
            from medblip_dicom.integrations.batch.manifest import done_paths

            done_paths(args.resume)  # a bad table is a usage error, before Ray starts
    except (ValueError, OSError, ManifestError) as exc:
        say_error("batch", exc)
        return EXIT_USAGE
    if not inputs:
        say_error("batch", "no files found in " + " ".join(args.inputs))
        return EXIT_USAGE
    from medblip_dicom.errors import MedblipError

    try:
        from medblip_dicom.integrations.batch.stages import model_inputs

        model_inputs(args.model, args.prompt)  # processor and prompt alone: a bad model fails here, not in every worker
    except MedblipError as exc:
        say_error("batch", exc)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        say_error("batch", f"model {args.model!r} cannot be loaded: {str(exc).splitlines()[0][:200]}")
        return EXIT_USAGE
    return _run(args, config, inputs, results)


def _quiet_ray(verbose: bool) -> None:
    """Ray's own INFO and WARNING lines (start-up, each dataset's execution) only with -v."""
    import ray.data  # noqa: F401 - configures its loggers on import

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)


def _run(args: argparse.Namespace, config, inputs: list[tuple[str, bool]], results: Path) -> int:  # noqa: ANN001
    import ray
    from tqdm import tqdm

    from medblip_dicom.integrations.batch.job import connect, run_batch
    from medblip_dicom.integrations.batch.results import summary, write_table

    _quiet_ray(args.verbose)
    owned = not ray.is_initialized() and args.ray_address is None
    try:
        startup = connect(args.ray_address)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
        say_error("batch", f"cannot start or join Ray at {args.ray_address or 'local'}: {exc}")
        return EXIT_FAILED
    _quiet_ray(args.verbose)  # ray.init and ray.data set their loggers up again
    counts = {"captioned": 0, "skipped": 0, "failed": 0}
    started = time.perf_counter()
    bar = tqdm(total=len(inputs), unit="file", disable=args.quiet or None, file=sys.stderr)

    def on_rows(chunk) -> None:  # noqa: ANN001 - a results DataFrame
        for status, n in chunk["status"].value_counts().items():
            counts[status] = counts.get(status, 0) + int(n)
        elapsed = time.perf_counter() - started
        bar.set_postfix(images_s=f"{counts['captioned'] / elapsed:.2f}" if elapsed > 0 else "-", **counts)
        bar.update(len(chunk))

    try:
        run = run_batch(inputs, config, on_rows=on_rows)
        bar.close()
        write_table(run.table, results)
    except Exception as exc:  # noqa: BLE001 - a job Ray could not finish: one line, exit 1
        bar.close()
        say_error("batch", f"the job stopped: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        return EXIT_FAILED
    finally:
        if owned:
            ray.shutdown()  # the local Ray's processes end with the job
    print(summary(run.table, run.elapsed_s), file=sys.stderr)
    print(f"steady state {run.steady_images_s:.2f} images/s; Ray started in {startup:.1f} s; results in {results}; "
          f"SRs in {args.out}", file=sys.stderr)
    from medblip_dicom.duplicates import is_conflict

    # an image under a SOPInstanceUID already used by another got no report: not everything was done
    conflicts = run.table["reason"].map(is_conflict) & (run.table["kind"] == "Duplicate")
    return EXIT_FAILED if (run.table["status"] == "failed").any() or conflicts.any() else EXIT_OK
