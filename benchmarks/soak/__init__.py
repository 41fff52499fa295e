"""The soak program: ``python -m benchmarks.soak`` (or ``nox -s soak``).

Worker processes run asyncstampede against a throwaway server for a while
(10 minutes by default) while faults are injected at random bounded
intervals; then it says whether any caller got a wrong value or no answer.
A program, not a test. Its parts:

- ``__main__``: the command line; starts the server and the workers, injects
  the faults, prints the summary, writes the JSON, exits non-zero on a
  wrong value, a hung request or a worker that crashed.
- ``_fleet``: the worker processes (start, hold a lock, kill, stop) and
  the event logs they write; ``_worker``: one worker process.
- ``_faults``: the faults (server restart, the watching connections
  killed, ``SCRIPT FLUSH``, a lock holder SIGKILLed).
- ``_values``: the values the computes return, signed, and the check of
  every value a caller gets; latency histograms.
- ``_analysis``: the logs turned into figures (generations, computes per
  generation, RSS growth) and the markdown summary.
"""
