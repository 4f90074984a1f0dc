"""The audit database: schema, migrations, connection, inserts, queries and retention."""
