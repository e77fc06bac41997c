"""Storing user feedback, and switching its collection on and off at run time."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .conversations import ConversationStore
from .errors import FieldError, Forbidden, ValidationFailed
from .records import Clock, Pseudonymizer, RecordPipeline, rfc3339
from .types import Identity

ADMIN_ROLE = "admin"


class FeedbackService:
    def __init__(
        self,
        enabled: bool,
        storage_configured: bool,
        conversations: ConversationStore,
        pipeline: RecordPipeline,
        pseudonymize: Pseudonymizer,
        clock: Clock,
    ) -> None:
        self._enabled = enabled
        self._storage_configured = storage_configured
        self._lock = threading.Lock()
        self._conversations = conversations
        self._pipeline = pipeline
        self._pseudonymize = pseudonymize
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._enabled

    def submit(self, identity: Identity, body: Mapping[str, Any]) -> None:
        """``body`` has passed the feedback request schema."""
        if not self._enabled:
            raise Forbidden(
                "Storing feedback is disabled.", response="Storing feedback is disabled"
            )
        user_key = self._pseudonymize(identity.user_id)
        conversation_id = body["conversation_id"].lower()
        self._conversations.check_access(conversation_id, user_key)
        categories = body.get("categories")
        sentiment = body.get("sentiment")
        record = {
            "user_id": user_key,
            "timestamp": rfc3339(self._clock()),
            "conversation_id": conversation_id,
            "user_question": body["user_question"],
            "llm_response": body["llm_response"],
            # JSON lets a client write 1.0 for 1; records hold the integer either way.
            "sentiment": None if sentiment is None else int(sentiment),
            "user_feedback": body.get("user_feedback"),
            "categories": list(dict.fromkeys(categories)) if categories else None,
        }
        self._pipeline.store("feedback", record, user_key, conversation_id)

    def set_enabled(self, identity: Identity, enabled: bool) -> dict[str, Any]:
        if ADMIN_ROLE not in identity.roles:
            raise Forbidden("Changing the feedback status requires the admin role")
        if enabled and not self._storage_configured:
            raise ValidationFailed(
                [
                    FieldError(
                        ("body", "status"),
                        "Feedback cannot be enabled: user_data_collection.feedback_storage "
                        "is not configured",
                    )
                ]
            )
        with self._lock:
            previous, self._enabled = self._enabled, enabled
        return {
            "status": {
                "previous_status": previous,
                "updated_status": enabled,
                "updated_by": identity.user_id,
                "timestamp": rfc3339(self._clock()),
            }
        }
