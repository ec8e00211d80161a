"""The review station (``medblip review``): a radiologist signs, edits or rejects each AI report.

Parts, one job each: :mod:`.store` (the review tables in the spool's journal: items, signed
reports, rejections, the audit trail), :mod:`.accounts` (reviewers, argon2 password hashes, API
tokens, login throttling), :mod:`.signing` (the VERIFIED SR, the IOCM rejection note, and the rules
a signed text and a rejection reason follow), :mod:`.intake` (delivery hands each AI report to the
review), :mod:`.render` (the image through the one pixel path), :mod:`.security` (sessions, CSRF),
:mod:`.deps` (the station and the authenticated reviewer as typed dependencies), :mod:`.app` (the
FastAPI app) with :mod:`.routes` (the pages and the JSON API, following one set of rules), and
:mod:`.feedback` (export and stats).
"""
