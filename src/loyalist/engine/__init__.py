"""Engines that run the analysis: the embedded DuckDB store (default) and Apache Spark (`--engine spark`).

The DuckDB engine is `loyalist.analysis.analyze`. The Spark engine (`loyalist.engine.spark`) runs the same
Ibis feature expressions on the Ibis PySpark backend, fits the same models on sufficient statistics collected
to the driver and scores every customer in parallel with the same numpy code. pyspark is an optional extra
(`pip install loyalist[spark]`): nothing here imports it until the Spark engine is used.

`loyalist.engine.cluster` starts and stops a Spark standalone cluster on the loopback interface (tests, bench).
"""

ENGINES = ("duckdb", "spark")
