"""Every use of pynetdicom's private API, in one place, checked against the pinned release.

pynetdicom has no public setting for these, and each measurably matters (bench/RESULTS.md):

- the node's listener sets TCP_NODELAY on each accepted socket and does the TLS handshake in the
  association's own thread with a timeout, by overriding ``ThreadedAssociationServer.get_request``
  and ``process_request_thread`` (stock pynetdicom handshakes in the listening thread, where one
  silent client stalls every other);
- ``AE.make_server`` does not register the server for ``AE.shutdown`` as ``start_server`` does:
  ``ae._servers``;
- an association's reactor polls every ``dul._run_loop_delay`` seconds (1 ms by default, which
  caps a loopback listener's rate);
- the sender sets TCP_NODELAY by overriding ``AE._create_socket``.

pyproject.toml pins pynetdicom to :data:`TESTED_SERIES`; :func:`check` (run when a node or a
sender is built, and by a test) fails with one sentence if a release moved any of these, so a new
pynetdicom cannot break them silently.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from medblip_dicom.errors import MissingDependencyError

logger = logging.getLogger(__name__)

#: The pynetdicom minor release these hooks were written and tested against.
TESTED_SERIES = "3.0"


@functools.cache
def check() -> None:
    """Raise :class:`MissingDependencyError` unless the installed pynetdicom has every hook used here."""
    import pynetdicom
    from pynetdicom import AE
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

    missing = [name for name, ok in (
        ("AE._create_socket", callable(getattr(AE, "_create_socket", None))),
        ("AE()._servers", isinstance(getattr(AE(), "_servers", None), list)),
        ("ThreadedAssociationServer.process_request_thread",
         callable(getattr(ThreadedAssociationServer, "process_request_thread", None))),
        ("AssociationServer.get_request", callable(getattr(AssociationServer, "get_request", None))),
        ("AssociationServer.ssl_context", hasattr(AssociationServer, "ssl_context")),
        ("DULServiceProvider._run_loop_delay", "_run_loop_delay" in DULServiceProvider.__init__.__code__.co_names),
    ) if not ok]
    if missing:
        raise MissingDependencyError(
            f"pynetdicom {pynetdicom.__version__} lacks {', '.join(missing)}, which medblip-dicom was written for "
            f"(pynetdicom {TESTED_SERIES}.x); install pynetdicom=={TESTED_SERIES}.*"
        )


def listener_class(handshake_timeout_s: float, on_refused: Callable[[Any, BaseException], None], *,
                   reuse_port: bool = False) -> type:
    """A ThreadedAssociationServer that sets TCP_NODELAY and does the TLS handshake per thread.

    `on_refused(client_address, error)` is told of each connection whose handshake failed. With
    `reuse_port`, the socket is bound with SO_REUSEPORT: several listener processes of one user
    share the port and the kernel spreads new connections across them.
    """
    from pynetdicom.transport import ThreadedAssociationServer

    class Listener(ThreadedAssociationServer):
        daemon_threads = True

        def server_bind(self) -> None:
            if reuse_port:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # type: ignore[union-attr]
            super().server_bind()

        def get_request(self) -> tuple[socket.socket, Any]:
            client, address = self.socket.accept()  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return client, address

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            if self.ssl_context is not None:
                try:
                    request.settimeout(handshake_timeout_s)
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                    request.settimeout(None)
                except (OSError, ValueError) as exc:
                    on_refused(client_address, exc)
                    with contextlib.suppress(OSError):
                        request.close()
                    return
            super().process_request_thread(request, client_address)

    return Listener


def register_server(ae: Any, server: Any) -> None:
    """Let ``ae.shutdown()`` stop a server made with ``ae.make_server`` (as ``start_server`` does)."""
    ae._servers.append(server)


def set_reactor_poll(assoc: Any, seconds: float) -> None:
    """How often the association's DUL reactor looks for work when idle."""
    dul = getattr(assoc, "dul", None)
    if dul is not None:
        dul._run_loop_delay = seconds


def reactor_poll(assoc: Any) -> float | None:
    """The association's reactor poll interval (for tests and logs)."""
    return getattr(getattr(assoc, "dul", None), "_run_loop_delay", None)


def nodelay_ae(ae_title: str, *, nodelay: bool = True, sockets: list[socket.socket] | None = None) -> Any:
    """An AE whose requested associations set TCP_NODELAY; each raw socket is also appended to
    `sockets` (pynetdicom drops a socket whose connect failed without closing it)."""
    from pynetdicom import AE

    class NoDelayAE(AE):
        def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> Any:
            sock = super()._create_socket(assoc, address, tls_args)
            if nodelay and sock.socket is not None:
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sockets is not None and sock.socket is not None:
                sockets.append(sock.socket)
            return sock

    return NoDelayAE(ae_title=ae_title)


def associate(ae: Any, sockets: list[socket.socket], host: str, port: int, *,
              evt_handlers: Sequence[Any] = (), **kwargs: Any) -> tuple[Any, str]:
    """``ae.associate(host, port, ...)`` for an AE from :func:`nodelay_ae` made with `sockets`, and
    why it failed: ``""`` when established, else ``"unreachable"`` (no TCP connection), ``"rejected"``
    or ``"aborted"``. On failure the raw sockets pynetdicom left open are closed. Each caller words
    the failure for its own peer (a destination, an archive)."""
    import threading

    from pynetdicom import evt

    connected = threading.Event()
    handlers = [(evt.EVT_CONN_OPEN, lambda event: connected.set()), *evt_handlers]
    assoc = ae.associate(host, port, evt_handlers=handlers, **kwargs)
    if assoc.is_established:
        return assoc, ""
    for raw in sockets:  # pynetdicom drops a socket whose connect failed without closing it
        with contextlib.suppress(OSError):
            raw.close()
    return assoc, "unreachable" if not connected.is_set() else "rejected" if assoc.is_rejected else "aborted"
