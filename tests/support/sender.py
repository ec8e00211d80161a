"""A DICOM sender that keeps account of what the node acknowledged, and resends the rest."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.dicom import requested_contexts
from tests.support.inputs import FLOOD_TEMPLATES


@dataclass
class SendLedger:
    """What a sender knows: instances acknowledged with success, and each attempt's outcome."""

    confirmed: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID -> path
    refused: dict[str, int] = field(default_factory=dict)  # SOPInstanceUID -> last non-success status
    attempts: int = 0
    broken_associations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class StoreSender(threading.Thread):
    """Sends queued files to the node over associations of up to `per_association` instances and resends
    whatever got no success (the node was down, killed mid-association, ...), like a modality does."""

    def __init__(self, port: int, ledger: SendLedger, *, ae_title: str = "MODALITY", called: str = "MEDBLIP",
                 per_association: int = 10, name: str = "sender",
                 contexts: list[tuple[str, str]] | None = None) -> None:
        super().__init__(name=f"reliability-{name}", daemon=True)
        self.contexts = contexts or requested_contexts(FLOOD_TEMPLATES)
        self.port = port
        self.ledger = ledger
        self.ae_title = ae_title
        self.called = called
        self.per_association = per_association
        self.queue: list[tuple[str, Path]] = []
        self.qlock = threading.Lock()
        self.stop_event = threading.Event()
        self.idle = threading.Event()
        self.in_association = threading.Event()
        self.round_confirmed = 0
        self.error: BaseException | None = None

    def add(self, files: dict[str, Path]) -> None:
        with self.qlock:
            self.queue.extend(files.items())
            self.idle.clear()

    def remaining(self) -> int:
        with self.qlock:
            return len(self.queue)

    def _ae(self):  # noqa: ANN202
        from pynetdicom import AE

        ae = AE(ae_title=self.ae_title)
        for sop_class, syntax in self.contexts:
            ae.add_requested_context(sop_class, syntax)
        for timeout in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, timeout, 15)
        return ae

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _run(self) -> None:
        ae = self._ae()
        while not self.stop_event.is_set():
            with self.qlock:
                batch = self.queue[: self.per_association]
            if not batch:
                self.idle.set()
                self.stop_event.wait(0.05)
                continue
            assoc = ae.associate("127.0.0.1", self.port, ae_title=self.called)
            if not assoc.is_established:
                self.stop_event.wait(0.1)  # the node is down or restarting: try again
                continue
            self.in_association.set()
            done: list[str] = []
            try:
                for uid, path in batch:
                    if self.stop_event.is_set():
                        break
                    with self.ledger.lock:
                        self.ledger.attempts += 1
                    try:
                        status = assoc.send_c_store(path)
                    except (RuntimeError, ValueError, OSError):
                        status = None
                    code = getattr(status, "Status", None) if status is not None else None
                    if code is None:
                        with self.ledger.lock:
                            self.ledger.broken_associations += 1
                        break  # association lost: the rest goes again on the next one
                    if code == 0x0000:
                        with self.ledger.lock:
                            self.ledger.confirmed[uid] = str(path)
                            self.ledger.refused.pop(uid, None)
                        self.round_confirmed += 1
                        done.append(uid)
                    else:
                        with self.ledger.lock:
                            self.ledger.refused[uid] = int(code)
                        break  # e.g. out of resources: back off, send it again later
            finally:
                self.in_association.clear()
                if assoc.is_established:
                    assoc.release()
            with self.qlock:
                self.queue = [(u, p) for u, p in self.queue if u not in set(done)]
            if not done:
                self.stop_event.wait(0.1)

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the sender thread did not stop"


class SenderGroup:
    """Several :class:`StoreSender` streams sharing one ledger, each over associations of its own:
    concurrent associations as from several modalities (the node commits their instances together)."""

    def __init__(self, port: int, ledger: SendLedger, *, streams: int, per_association: int = 10) -> None:
        self.senders = [StoreSender(port, ledger, per_association=per_association, name=f"sender-{k}")
                        for k in range(streams)]

    def start(self) -> None:
        for sender in self.senders:
            sender.start()

    def add(self, files: dict[str, Path]) -> None:
        """Deal the files out to the streams in turn."""
        items = list(files.items())
        for k, sender in enumerate(self.senders):
            sender.add(dict(items[k::len(self.senders)]))

    def remaining(self) -> int:
        return sum(s.remaining() for s in self.senders)

    @property
    def round_confirmed(self) -> int:
        return sum(s.round_confirmed for s in self.senders)

    def in_association(self) -> bool:
        return any(s.in_association.is_set() for s in self.senders)

    @property
    def error(self) -> BaseException | None:
        return next((s.error for s in self.senders if s.error is not None), None)

    def close(self) -> None:
        for sender in self.senders:
            sender.stop_event.set()
        for sender in self.senders:
            sender.close()
