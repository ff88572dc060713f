"""Real-time engines (kdb+ RTE / CEP): per-sym analytics and bars from the tickerplant log; see worker.py."""
