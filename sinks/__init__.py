"""History: the PDB writes each closed day as a sorted Parquet partition; the HDB reads them.

- ``pdb``: the persisting database, a consumer group outside the query path
  (``tickplant pdb run``);
- ``spill``: its on-disk cache of the day, with an atomic, idempotent offset record;
- ``sort`` and ``writedown``: a day sorted by sym, time (in memory or through
  runs on disk) into ``<root>/<table>/date=YYYY-MM-DD/part-*.parquet`` and a
  manifest written last (``manifest``, ``store``: local directory or S3);
- ``markers``: the control topic's "published" marker (the RDB drops the day);
- ``backfill``: a past day written from the retained log (``tickplant hdb backfill``);
- ``hdb``: ClickHouse SQL over the partitions (chdb embedded or a server):
  tables by date range, as-of join, bars, VWAP;
- ``cli``: ``tickplant hdb ls|backfill`` and ``tickplant pdb run``.
"""
