"""Offline tuning: the tools that fit and judge a graph before it serves traffic.

Nothing in the runtime core imports this package. It holds the labelled-data handling,
classifier training (:mod:`.training`), scoring a graph's triage tier over labelled rows
(:mod:`.scoring`), the metrics (:mod:`.evaluation`), threshold fitting (:mod:`.calibration`),
the reports and plots they produce, and the patch that writes fitted thresholds back into a
graph file (:mod:`.gate_patch`). ``triagegate train``, ``eval`` and ``calibrate`` are thin
command-line fronts over these modules.
"""
