"""ms-service-metric probe provider (runs inside the target Python process).

Generic engine: it instruments whatever the agent's control file names; it
knows nothing about vLLM beyond reading vLLM's version for version guards.

Entry points::

    import msm_provider
    msm_provider.start()    # load _msm_probe, start the dormant poll thread (idempotent)
    msm_provider.stop()     # stop polling and restore every original function
    msm_provider.get_provider()   # the process-wide Provider (or None)

``start()`` never raises when called with ``quiet=True`` (sitecustomize and
injected bootstraps use that); it returns the Provider or None.
"""

import os
import threading

from .provider import Provider, load_native, PROVIDER_VERSION  # noqa: F401

__version__ = PROVIDER_VERSION
__all__ = ["start", "stop", "get_provider", "Provider", "load_native", "__version__"]

_provider = None
_start_lock = threading.Lock()
_fork_registered = False


def _after_fork_child():
    global _start_lock
    _start_lock = threading.Lock()
    p = _provider
    if p is not None:
        try:
            p.after_fork_child()
        except Exception:
            pass


def start(quiet=False, **kwargs):
    """Start the process-wide provider (dormant until the semaphore rises).

    ``kwargs`` go to :class:`Provider` on first start (native, native_path, control_path,
    semaphore, poll_interval, origin, ...). Returns the Provider.

    Injected bootstraps call ``start(quiet=True, control_path=..., native_path=...,
    origin="injected")``; a second injection only restarts a poll thread that ended."""
    global _provider, _fork_registered
    try:
        with _start_lock:
            if _provider is None:
                _provider = Provider(**kwargs)
            elif (kwargs.get("control_path") and _provider.origin == "injected"
                  and (_provider._thread is None or not _provider._thread.is_alive())):
                _provider.control_path = kwargs["control_path"]
            if not _fork_registered and hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_child)
                _fork_registered = True
            _provider.start()
            return _provider
    except Exception as e:
        if not quiet:
            raise
        try:
            import sys
            sys.stderr.write("ms-service-metric provider (pid %d): not started: %s: %s\n"
                             % (os.getpid(), type(e).__name__, e))
        except Exception:
            pass
        return None


def stop(restore=True):
    """Stop the poll thread and restore every instrumented function."""
    global _provider
    p = _provider
    if p is not None:
        p.stop(restore=restore)
    _provider = None


def get_provider():
    return _provider
