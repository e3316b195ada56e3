"""Shared test setup. Subprocesses (`python -m mta ...`) often run in another
working directory; make a relative PYTHONPATH (the dev loop's
`PYTHONPATH=python`) absolute so they import the same package."""

import os

if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p
    )
