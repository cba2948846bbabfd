"""Scale-out processing: tickets on a Redis stream, workers in a consumer group, outcomes in PostgreSQL.

Delivery is at least once; the ``outcomes`` table is keyed by ``(ticket_id, graph_hash)``
and written with an upsert, and an entry is acknowledged only after its row commits, so
redelivery after a crash never loses or duplicates a result. ``triagegate enqueue`` reads
files with :mod:`triagegate.inputs`, which names a ticket without an id by its content, so
enqueueing the same file again updates the same rows. Needs the ``queue`` extra.
"""
