"""Helpers shared by the tests, one copy each.

* :mod:`tests.support.net` — :func:`~tests.support.net.free_port` and
  :func:`~tests.support.net.accepts_connections`;
* :mod:`tests.support.waiting` — :func:`~tests.support.waiting.wait_for`, the one polling loop (a deadline and a
  readable message when it passes);
* :mod:`tests.support.scp` — :class:`~tests.support.scp.StoreSCP`, the stub Storage SCP standing in for a PACS,
  and its ``scp_factory`` fixture;
* :mod:`tests.support.studies` — the small synthetic study (``synth_case``) and
  :func:`~tests.support.studies.synth_cohort`.

Fixtures defined here are made available to a folder's tests by importing them into its ``conftest.py``.
"""
