"""Run ``DAG.test()`` of a DAG file in this process: ``python dag_test_runner.py FILE DAG_VAR CONF_JSON``.

Started by the tests in a subprocess whose environment is the local stack's Airflow environment,
so the in-process run uses the stack's metadata DB, connections and services.
"""

from __future__ import annotations

import importlib.util
import json
import sys

path, var, conf = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec = importlib.util.spec_from_file_location("dag_under_test", path)
assert spec and spec.loader
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = getattr(module, var).test(run_conf=conf)
print(f"DAGTEST_STATE {run.state}")
