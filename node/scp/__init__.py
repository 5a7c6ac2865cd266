"""The DICOM listener: a pynetdicom C-ECHO / C-STORE SCP writing every instance to a durable spool.

``server.py`` wires the AE (contexts, limits, TLS, handlers); ``handlers.py`` holds one ``handle_<event>``
per event; ``spool.py`` does the fsync + atomic-rename writes; ``status.py`` names the statuses returned.
"""
