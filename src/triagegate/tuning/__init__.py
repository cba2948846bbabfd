"""Offline tuning: the tools that fit and judge a graph before it serves traffic.

Nothing in the runtime core imports this package. It holds the labelled-data handling,
classifier training (:mod:`.training`), the one runner that triages labelled rows through
the graph's triage tier and the eval service (:mod:`.scoring`), the metrics and the selective
curve (:mod:`.evaluation`), threshold fitting (:mod:`.calibration`) and the calibrate
service (:mod:`.calibrate`), every tier's thresholds fitted at once over recorded per-tier
predictions (:mod:`.cascade`, and the ``--cascade`` services in :mod:`.cascade_tuning`), the
reports and plots they produce, and the patch that writes fitted thresholds back into a graph
file (:mod:`.gate_patch`). Cost estimates come from the
core's :mod:`triagegate.cost`, shared with ``batch --dry-run``. ``triagegate train``,
``eval`` and ``calibrate`` are thin command-line fronts over these modules.

:mod:`.monitoring` judges a graph after it serves traffic, from the outcome store: the
figures of ``triagegate report``, which ``serve`` also exports on ``/metrics``.
"""
