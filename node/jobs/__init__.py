"""The job layer: one received study -> features -> predictions -> validated SR (+ companions) on disk.

:mod:`node.jobs.process` is the processing core (``process_study``, ``write_failure_report``);
:mod:`node.jobs.model_set` loads the model set. Research use only, not for diagnosis.
"""
