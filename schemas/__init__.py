"""The table schemas, one Avro file per table (``rte/``: the real-time engines' outputs).

A package only so that an installed plant carries its schemas: the default
``schemas_dir`` is this directory, in a checkout and in site-packages alike.
"""
