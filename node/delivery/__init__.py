"""Delivery of result objects to the PACS: :mod:`node.delivery.scu` (C-STORE SCU), :mod:`node.ledger.deliveries`
(the ledger operations of the outbox) and :mod:`node.delivery.outbox` (retry with exponential backoff, dead
letters, resend)."""
