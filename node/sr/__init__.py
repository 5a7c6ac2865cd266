"""Result objects: the TID 1500 SR (source of truth), companion Secondary Capture / Encapsulated PDF, validation.

Modules: :mod:`~node.sr.codes` (named concepts, private scheme ``99BCMETS``), :mod:`~node.sr.content` (value
objects), :mod:`~node.sr.report` (``build_report``), :mod:`~node.sr.companion` (``build_companion_sc``,
``build_companion_pdf``), :mod:`~node.sr.failure` (short SR saying why a study was not processed),
:mod:`~node.sr.validate` (re-read and external validators). Research use only, not for diagnosis.
"""
