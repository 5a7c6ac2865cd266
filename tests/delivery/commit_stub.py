"""A small pynetdicom PACS for the Storage Commitment tests: a Storage SCP that also takes the N-ACTION and then
answers with an N-EVENT-REPORT that commits, or refuses to commit, each instance, on a new association to the
node's commitment listener (as Orthanc does) or on the N-ACTION's own association; or never answers."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt

from node.delivery.commitment import EVENT_FAILURES, EVENT_SUCCESS, STORAGE_COMMITMENT_PUSH
from node.values import Destination


@dataclass
class CommitStub:
    port: int
    commit: bool = True  # False: every instance fails with ``failure_reason``
    reply: str = "new"  # "new" association to (node_host, node_port), "same" association, or "none"
    node_port: int = 0
    node_ae: str = "AINODE"
    failure_reason: int = 0x0110
    ae_title: str = "STUBPACS"
    stored: list[str] = field(default_factory=list)
    actions: list[Dataset] = field(default_factory=list)
    reports_sent: list[int] = field(default_factory=list)  # N-EVENT-REPORT response statuses
    _server: Any = None

    @property
    def destination(self) -> Destination:
        return Destination(self.ae_title, "127.0.0.1", self.port, commitment=True)

    def _store(self, event: Any) -> int:
        self.stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def _event_info(self, action: Dataset) -> tuple[int, Dataset]:
        info = Dataset()
        info.TransactionUID = action.TransactionUID
        items = []
        for ref in action.ReferencedSOPSequence:
            item = Dataset()
            item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
            item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
            if not self.commit:
                item.FailureReason = self.failure_reason
            items.append(item)
        if self.commit:
            info.ReferencedSOPSequence = items
            return EVENT_SUCCESS, info
        info.FailedSOPSequence = items
        return EVENT_FAILURES, info

    def _report(self, assoc: Any, action: Dataset) -> None:
        time.sleep(0.1)  # after the N-ACTION response
        event_type, info = self._event_info(action)
        if self.reply == "same":
            status, _ = assoc.send_n_event_report(info, event_type, STORAGE_COMMITMENT_PUSH,
                                                  "1.2.840.10008.1.20.1.1")
        else:
            ae = AE(ae_title=self.ae_title)
            ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
            other = ae.associate("127.0.0.1", self.node_port, ae_title=self.node_ae)
            if not other.is_established:
                self.reports_sent.append(-1)
                return
            status, _ = other.send_n_event_report(info, event_type, STORAGE_COMMITMENT_PUSH,
                                                  "1.2.840.10008.1.20.1.1")
            other.release()
        self.reports_sent.append(int(getattr(status, "Status", -1)))

    def _action(self, event: Any) -> tuple[int, Dataset | None]:
        action = event.action_information
        self.actions.append(action)
        if self.reply != "none":
            threading.Thread(target=self._report, args=(event.assoc, action), daemon=True).start()
        return 0x0000, None

    def start(self) -> CommitStub:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
