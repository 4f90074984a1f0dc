"""Per-event processing: policy lookup, fetch, decode, cache, engine, decision, assembly."""
