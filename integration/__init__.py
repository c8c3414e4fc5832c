"""ecgbridge integration: the imperative shell.

Settings, listeners (MLLP, HTTP), the durable inbox, the Celery app and its tasks, write-back
to the EHR and the CLI. This package may import `inference` and `mappers`; they never import it.
"""
