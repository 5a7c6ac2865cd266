"""The DICOM listener: a pynetdicom C-ECHO / C-STORE SCP writing every instance to a durable spool.

``server.py`` wires the AE (contexts, limits, TLS, handlers); ``transport.py`` runs the connections (handshake
deadline, limits per peer, bounded reads); ``receive.py`` puts each dataset into the spool as it arrives;
``handlers.py`` holds one ``handle_<event>`` per event; ``header.py`` checks a dataset (``dataset.py`` walks it,
``vr.py`` has the value rules, ``source.py`` reads or inflates it); ``status.py`` names the statuses returned.
"""
