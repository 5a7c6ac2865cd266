"""The study ledger: what was received, from whom, when; study states, jobs, deliveries and the audit trail.

``db.py`` opens the database (SQLite WAL by default, PostgreSQL by URL), ``models.py`` holds the tables,
``repository.py`` the operations, ``completeness.py`` decides when a study is ready to process.
"""
