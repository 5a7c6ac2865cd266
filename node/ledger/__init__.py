"""The study ledger: what was received, from whom, when; study states, jobs, deliveries and the audit trail.

``db.py`` opens the database (SQLite WAL by default, PostgreSQL by URL), ``tables.py`` holds the ORM tables
(used inside this package only), ``states.py`` the states and ``records.py`` the frozen records callers get.
One module per kind of record holds its operations (``intake.py``, ``studies.py``, ``jobs.py``,
``deliveries.py``, ``primary.py``, ``audit.py``), all run by ``transaction.py``; ``repository.py`` gathers
them in :class:`~node.ledger.repository.Repository`, ``views.py`` holds the dashboard's read-only views.
"""
