"""``medblip pull --listen [HOST:]PORT``: the pull's own Storage SCP, the C-MOVE destination for as
long as the pull runs.

It accepts every storage SOP class with every transfer syntax the installed decoders read (as the
node does) and hands each C-STORE to a :class:`~.dimse_receive.Receiver`, which keeps only the
instances this pull asked for, in the study's temporary folder, never in a service's spool. It
binds 127.0.0.1 unless told otherwise, takes DICOM TLS from ``[node.tls]`` (handshakes in each
association's own thread, as the node) and optionally only the calling AE titles given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from medblip_dicom.integrations.config.tls import NodeTLSConfig
from medblip_dicom.integrations.ingest.node import accepted_transfer_syntaxes, server_ssl_context
from medblip_dicom.integrations.net import pynetdicom_compat
from medblip_dicom.integrations.pull.dimse_receive import Receiver

logger = logging.getLogger(__name__)


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT``) as (host, port); ValueError naming ``--listen``."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535 or (sep and not host):
        raise ValueError(f"--listen {text!r} is not PORT or HOST:PORT (for example 11113 or 0.0.0.0:11113)")
    return host, number


class MoveListener:
    """A Storage SCP for C-MOVE sub-operations; :meth:`start` listens, :meth:`stop` shuts it down."""

    def __init__(self, receiver: Receiver, ae_title: str, host: str = "127.0.0.1", port: int = 0, *,
                 tls: NodeTLSConfig | None = None, allowed_calling_aets: Sequence[str] = (),
                 timeout_s: float = 30.0) -> None:
        self.receiver = receiver
        self.ae_title = ae_title
        self.host = host
        self.requested_port = port
        self.tls = tls or NodeTLSConfig()
        self.allowed_calling_aets = tuple(allowed_calling_aets)
        self.timeout_s = timeout_s
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("the pull's listener is not listening")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and listen in a background thread; OSError when the port cannot be bound."""
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        pynetdicom_compat.check()
        ae = AE(ae_title=self.ae_title)
        syntaxes = accepted_transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(ae, name, self.timeout_s)
        if self.allowed_calling_aets:
            ae.require_calling_aet = list(self.allowed_calling_aets)
        handlers = [(evt.EVT_C_STORE, self.receiver.handle_store), (evt.EVT_C_ECHO, lambda event: 0x0000)]
        ssl_context = server_ssl_context(self.tls) if self.tls.enabled else None
        listener = pynetdicom_compat.listener_class(self.timeout_s, self._on_handshake_failed)
        self._server = ae.make_server((self.host, self.requested_port), ssl_context=ssl_context,
                                      evt_handlers=handlers, server_class=listener)
        pynetdicom_compat.register_server(ae, self._server)
        self._thread = threading.Thread(target=self._server.serve_forever, name="medblip-pull-listener", daemon=True)
        self._thread.start()
        logger.info("pull listener %s on %s:%d (%s) for C-MOVE", self.ae_title, self.host, self.port,
                    "TLS" if ssl_context else "plain TCP")

    def _on_handshake_failed(self, client_address: Any, exc: BaseException) -> None:
        logger.warning("pull listener: TLS handshake from %s failed (%s)", client_address[0]
                       if isinstance(client_address, tuple) else client_address, type(exc).__name__)

    def stop(self) -> None:
        """Stop listening and end every association still open."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        for assoc in server.active_associations:
            assoc.abort()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MoveListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
