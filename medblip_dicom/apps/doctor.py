"""``medblip doctor``: what this installation can do, and what to do about what it cannot.

Each check returns :class:`Finding` rows (``ok``, ``warn`` or ``fail``) with a hint for anything
that is not ok: which transfer syntaxes decode with the installed plug-ins, the compute device and
its bf16 support, the Hugging Face model cache, which model families this install can serve,
dcmtk / dicom3tools / Orthanc, whether the
DICOM node's port is free, and (with ``--config``) whether a configured DICOMweb server answers
and whether the configured DIMSE archive (``[forward] destination``) answers C-ECHO and C-FIND.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, say_error
from medblip_dicom.systemtools import TOOLS, find_system_tool

if TYPE_CHECKING:  # pragma: no cover - typing only
    from medblip_dicom.integrations.config.file import ForwardConfig

#: Transfer syntaxes a hospital sends, by name.
TRANSFER_SYNTAXES = (
    "ImplicitVRLittleEndian", "ExplicitVRLittleEndian", "ExplicitVRBigEndian", "DeflatedExplicitVRLittleEndian",
    "JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLossless", "JPEGLosslessSV1", "JPEGLSLossless",
    "JPEGLSNearLossless", "JPEG2000Lossless", "JPEG2000", "HTJ2KLossless", "HTJ2KLosslessRPCL", "HTJ2K",
    "RLELossless",
)

@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    area: str
    status: str  # ok | warn | fail
    what: str
    hint: str = ""


def check_decoders() -> list[Finding]:
    """Which transfer syntaxes the installed pydicom plug-ins can decode."""
    import pydicom.uid
    from pydicom.pixels import get_decoder

    out = []
    for name in TRANSFER_SYNTAXES:
        uid = getattr(pydicom.uid, name, None)
        if uid is None:
            continue
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            out.append(Finding("decode", "warn", f"{uid.name}: no decoder in this pydicom",
                               "upgrade pydicom"))
            continue
        if decoder.is_available:
            plugins = ", ".join(sorted(decoder.available_plugins)) or "native"
            out.append(Finding("decode", "ok", f"{uid.name} ({plugins})"))
        else:
            missing = ", ".join(sorted(decoder.missing_dependencies)) or "a plug-in"
            out.append(Finding("decode", "warn", f"{uid.name}: cannot decode",
                               f"install one of: {missing}"))
    return out


def check_device() -> list[Finding]:
    """CUDA / MPS / CPU and the precision ``--dtype auto`` will use."""
    import torch

    from medblip_dicom.captioner import cpu_has_native_bf16, resolve_device, resolve_dtype

    device = resolve_device("auto")
    dtype = str(resolve_dtype("auto", device)).split(".")[-1]
    out = []
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        bf16 = "yes" if torch.cuda.is_bf16_supported() else "no"
        out.append(Finding("device", "ok", f"CUDA: {name} (bf16: {bf16}); auto uses cuda with {dtype}"))
    else:
        hint = "install a CUDA build of torch on a GPU machine for fast captioning"
        if device.type == "mps":
            out.append(Finding("device", "ok", f"Apple MPS; auto uses mps with {dtype}"))
        else:
            out.append(Finding("device", "warn", f"no GPU: auto uses the CPU with {dtype}", hint))
    bf16 = "yes" if cpu_has_native_bf16() else "no"
    out.append(Finding("device", "ok", f"CPU: {os.cpu_count()} cores, native bf16: {bf16}, torch {torch.__version__}"))
    return out


def check_model_cache() -> list[Finding]:
    """The Hugging Face cache and the BLIP models already in it (usable offline)."""
    from huggingface_hub import constants, scan_cache_dir

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    cache = Path(constants.HF_HUB_CACHE)
    out = [Finding("models", "ok", f"cache {cache} (HF_HUB_OFFLINE={'1' if offline else '0'})")]
    try:
        repos = [r.repo_id for r in scan_cache_dir(cache).repos if r.repo_type == "model"]
    except Exception:  # noqa: BLE001 - an absent or unreadable cache is just empty
        repos = []
    blip = [r for r in repos if "blip" in r.lower()]
    if blip:
        out.append(Finding("models", "ok", "cached BLIP models: " + ", ".join(sorted(blip))))
    else:
        out.append(Finding("models", "warn", "no BLIP model in the cache",
                           "pass --model DIR (a save_pretrained directory, e.g. RUN_DIR/best from "
                           "`medblip train`), or download a hub model on a machine with network"))
    return out


def check_families() -> list[Finding]:
    """Which model families this install can serve (:mod:`medblip_dicom.families`); nothing is downloaded."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from medblip_dicom.families import FAMILIES, family_status, takes_prompt

    out = []
    for family in FAMILIES:
        status = family_status(family.model_type)
        how = "with a prompt" if takes_prompt(family.model_type) else "without a prompt"
        if status.servable:
            out.append(Finding("families", "ok", f"{family.label}: {status.architecture}, {how} (e.g. {family.example})"))
        else:
            hint = ("install torchvision (the build matching your torch)" if "torchvision" in status.reason
                    else "upgrade transformers")
            out.append(Finding("families", "warn", f"{family.label}: cannot serve here: {status.reason}", hint))
    out.append(Finding("families", "ok", f"any of the {len(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)} model types "
                       f"transformers {transformers.__version__} loads with AutoModelForImageTextToText is accepted"))
    return out


def check_tools() -> list[Finding]:
    """dcmtk, dicom3tools and Orthanc (used by tests, validation and as a test PACS)."""
    out = []
    for tool, package in TOOLS.items():
        path = find_system_tool(tool)
        if path:
            out.append(Finding("tools", "ok", f"{tool}: {path}"))
        else:
            out.append(Finding("tools", "warn", f"{tool} not found", f"apt-get install {package}"))
    orthanc = find_system_tool("Orthanc")
    if orthanc:
        out.append(Finding("tools", "ok", f"Orthanc: {orthanc}"))
    else:
        out.append(Finding("tools", "warn", "Orthanc not found (only needed as a test PACS)", "apt-get install orthanc"))
    return out


def check_port(host: str, port: int) -> list[Finding]:
    """Whether the DICOM node could listen on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return [Finding("network", "fail", f"cannot listen on {host}:{port} ({exc.strerror})",
                            "stop what uses the port, or choose another with --port / [node] port")]
    return [Finding("network", "ok", f"{host}:{port} is free for `medblip node`")]


def check_dicomweb(url: str, settings: object = None) -> list[Finding]:
    """Whether the configured STOW-RS destination ([forward] dicomweb_url) answers a QIDO-RS query."""
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.delivery.sinks.probe import probe

    try:
        answers, words = probe(url, settings)  # type: ignore[arg-type]
    except MedblipError as exc:  # a token file that cannot be read, ...
        return [Finding("dicomweb", "fail", f"{url}: {exc}", "fix [forward.dicomweb] in the config file")]
    if answers:
        return [Finding("dicomweb", "ok", f"{url} {words}")]
    return [Finding("dicomweb", "fail", f"{url} {words}",
                    "check the URL, that the archive runs, [forward.dicomweb] credentials and CA")]


def check_dimse(forward: ForwardConfig) -> list[Finding]:
    """Whether the configured DIMSE archive ([forward] destination) answers C-ECHO and C-FIND, as
    ``[forward] calling_ae_title`` over ``[forward.tls]`` (what ``medblip pull --config`` uses)."""
    from medblip_dicom.integrations.pull.dimse_find import probe
    from medblip_dicom.integrations.pull.dimse_link import DimseSettings

    assert forward.destination is not None
    settings = DimseSettings(calling_ae_title=forward.calling_ae_title, tls=forward.tls,
                             timeout_s=min(forward.timeout_s, 10.0))
    hint = "check [forward] destination and that the archive knows our AE title (calling_ae_title) and host"
    return [Finding("dimse", "ok" if ok else "fail", words, "" if ok else hint)
            for _, ok, words in probe(forward.destination, settings)]


def run_checks(host: str = "127.0.0.1", port: int = 11112) -> list[Finding]:
    """All checks, in report order."""
    return [*check_decoders(), *check_device(), *check_model_cache(), *check_families(), *check_tools(),
            *check_port(host, port)]


def format_findings(findings: list[Finding]) -> str:
    """The report as text: one line per finding, hints indented below problems."""
    marks = {"ok": "  ok ", "warn": "WARN ", "fail": "FAIL "}
    lines, area = [], None
    for f in findings:
        if f.area != area:
            area = f.area
            lines.append(f"[{area}]")
        lines.append(f"{marks[f.status]} {f.what}")
        if f.hint:
            lines.append(f"       -> {f.hint}")
    problems = sum(f.status != "ok" for f in findings)
    lines.append(f"{problems} problem(s) found" if problems else "everything looks fine")
    return "\n".join(lines)


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``medblip doctor``."""
    doctor = sub.add_parser("doctor", help="check decoders, device, model cache, DICOM tools and ports",
                            description="Report what this installation can do and what to do about problems.",
                            epilog="examples:\n  medblip doctor\n  medblip doctor --config medblip.toml",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("--config", type=Path, default=None, help="service TOML file (for the node's host and port)")
    doctor.add_argument("--host", default=None, help="address the node would bind (default 127.0.0.1)")
    doctor.add_argument("--port", type=int, default=None, help="port the node would listen on (default 11112)")
    doctor.set_defaults(func=cmd_doctor, quick_exit=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run ``medblip doctor``; exit 1 when a check failed (warnings do not count)."""
    from medblip_dicom.errors import MedblipError

    host, port = "127.0.0.1", 11112
    forward = None
    if args.config is not None:
        try:
            from medblip_dicom.integrations.config.file import load_config

            config = load_config(args.config)
            host, port, forward = config.node.host, config.node.port, config.forward
        except MedblipError as exc:
            say_error("doctor", exc)
            return EXIT_USAGE
    findings = run_checks(args.host or host, args.port if args.port is not None else port)
    if forward is not None and forward.dicomweb_url:
        findings += check_dicomweb(forward.dicomweb_url, forward.dicomweb)
    if forward is not None and forward.destination is not None:
        findings += check_dimse(forward)
    print(format_findings(findings))
    return EXIT_FAILED if any(f.status == "fail" for f in findings) else EXIT_OK
