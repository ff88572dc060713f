"""``python -m streams.cep.analytics > schemas/rte/analytics.avsc``: the schema of the registered analytics."""

from streams.cep.analytics import main

main()
