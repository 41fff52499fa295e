"""The asyncstampede benchmark harness: ``python -m benchmarks`` (or ``nox -s bench``).

A program, not a test. Its parts:

- ``__main__``: the command line; runs the scenarios asked for, prints, writes.
- ``_base``: the options, the row type, a progress bar; ``_server``: the
  throwaway Redis (and Redis Cluster) and command counting (``INFO
  commandstats``); ``_pool``: the worker processes; ``_stats``: percentiles.
- ``_scenarios/``: one module per scenario (herd, hits, churn, crash, steady,
  wakeup, wake-transports, outage, and cluster, run only when asked for), each
  driving the workers and turning their reports into rows.
- ``_worker``: one worker process, and ``_strategies``: the caching strategies
  it can run (asyncstampede and its peers, each as its documentation shows it).
- ``_report``: tables and JSON; ``_figure``: the PNG; ``_targets``: the verdict
  on asyncstampede's targets.
"""
