"""ms-service-metric bootstrap (``ms-service-metric exec``).

Starts the probe provider dormant, then runs the next ``sitecustomize`` found
further on sys.path (the user's or the distribution's own), so that one keeps
working. Never raises into the program: at most one line on stderr.
"""


def _msm_boot():
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        provider_dir = os.environ.get("MS_SERVICE_METRIC_PROVIDER") or os.path.dirname(here)
        if provider_dir not in sys.path:
            sys.path.append(provider_dir)
        import msm_provider
        msm_provider.start(quiet=True)
    except BaseException as e:  # noqa: BLE001 - never break the program
        try:
            sys.stderr.write("ms-service-metric provider (pid %d): not started: %s: %s\n"
                             % (os.getpid(), type(e).__name__, e))
        except BaseException:
            pass


def _msm_chain():
    """Execute the next sitecustomize on sys.path, as if it were the first."""
    import os
    import sys
    me = sys.modules.get(__name__)
    try:
        import importlib.machinery
        import importlib.util
        here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
        rest = []
        for entry in sys.path:
            try:
                if os.path.realpath(os.path.abspath(entry or os.curdir)) == here:
                    continue
            except Exception:
                pass
            rest.append(entry)
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is None or spec.loader is None:
            return
        if spec.origin and os.path.realpath(spec.origin) == os.path.realpath(__file__):
            return
        mod = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            if me is not None:
                sys.modules["sitecustomize"] = me
            raise
    except Exception as e:
        # What site.py itself does when sitecustomize fails: report, continue.
        try:
            sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                             "%s: %s\n" % (type(e).__name__, e))
        except BaseException:
            pass


_msm_boot()
_msm_chain()
