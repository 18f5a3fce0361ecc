"""Every Celery setting name, and what it means here: one table.

The names are Celery's (celery/app/defaults.py, 5.x): each new lowercase name and each old
uppercase one (`CELERYD_MAX_TASKS_PER_CHILD`), written in lower case. A name either sets an
aiotq setting (a str: the field of `settings.Settings` it sets) or is `Unsupported`, with
the reason where one helps. settings.py looks every key up here, so a real Celery name is
never answered with a "did you mean" that points at an unrelated setting, and a typo of one
still is.
"""

from __future__ import annotations

from typing import NamedTuple


class Unsupported(NamedTuple):
    """A Celery setting aiotq does not support; `reason` (may be empty) goes in the error."""

    reason: str = ""


def _unsupported(names: str, reason: str = "") -> dict[str, Unsupported]:
    return dict.fromkeys(names.split(), Unsupported(reason))


_BACKENDS = "aiotq's result backends are redis://, sqlite://, memory:// and rpc://"
_IN_URL = "write it into the URL"
_STORE_RETRIED = "a store error that may pass is retried while the message stays unacknowledged"
_NOT_COMPRESSED = "messages and results are JSON or MessagePack, not compressed"

CELERY_SETTINGS: dict[str, str | Unsupported] = {
    # -- set an aiotq setting (aiotq's names carry their unit: `_s` is seconds) -----------------
    "accept_content": "accept_content",
    "celery_accept_content": "accept_content",
    "enable_utc": "enable_utc",
    "celery_enable_utc": "enable_utc",  # Celery 3's name
    "imports": "imports",
    "celery_imports": "imports",
    "include": "include",
    "celery_include": "include",
    "timezone": "timezone",
    "celery_timezone": "timezone",
    "beat_schedule": "beat_schedule",
    "celerybeat_schedule": "beat_schedule",
    "broker_url": "broker_url",
    "broker_connection_timeout": "broker_connection_timeout_s",
    "broker_connection_retry_on_startup": "broker_connection_retry_on_startup",
    "broker_pool_limit": "broker_pool_size",
    "broker_transport_options": "broker_transport_options",
    "result_backend_transport_options": "result_backend_transport_options",
    "celery_result_backend_transport_options": "result_backend_transport_options",
    "result_backend": "result_backend",
    "celery_result_backend": "result_backend",
    "result_expires": "result_expires_s",
    "celery_task_result_expires": "result_expires_s",
    "result_extended": "result_extended",
    "celery_result_extended": "result_extended",
    "result_serializer": "result_serializer",
    "celery_result_serializer": "result_serializer",
    "task_acks_late": "task_acks_late",
    "celery_acks_late": "task_acks_late",
    "task_always_eager": "task_always_eager",
    "celery_always_eager": "task_always_eager",
    "task_annotations": "task_annotations",
    "celery_annotations": "task_annotations",
    "task_default_exchange": "task_default_exchange",
    "celery_default_exchange": "task_default_exchange",
    "task_default_exchange_type": "task_default_exchange_type",
    "celery_default_exchange_type": "task_default_exchange_type",
    "task_default_priority": "task_default_priority",
    "celery_default_priority": "task_default_priority",
    "task_default_queue": "task_default_queue",
    "celery_default_queue": "task_default_queue",
    # RabbitMQ's queue type: aiotq declares every queue of its own with it
    "task_default_queue_type": "broker_queue_type",
    "celery_default_queue_type": "broker_queue_type",
    "task_default_routing_key": "task_default_routing_key",
    "celery_default_routing_key": "task_default_routing_key",
    "task_eager_propagates": "task_eager_propagates",
    "celery_eager_propagates_exceptions": "task_eager_propagates",
    "task_ignore_result": "task_ignore_result",
    "celery_ignore_result": "task_ignore_result",
    "task_queues": "task_queues",
    "celery_queues": "task_queues",
    "task_reject_on_worker_lost": "task_reject_on_worker_lost",
    "task_protocol": "task_protocol",
    "celery_reject_on_worker_lost": "task_reject_on_worker_lost",
    "task_routes": "task_routes",
    "celery_routes": "task_routes",
    "task_send_sent_event": "task_send_sent_event",
    "celery_send_task_sent_event": "task_send_sent_event",
    "task_serializer": "task_serializer",
    "celery_task_serializer": "task_serializer",
    "task_soft_time_limit": "task_soft_time_limit_s",
    "celeryd_task_soft_time_limit": "task_soft_time_limit_s",
    "task_time_limit": "task_time_limit_s",
    "celeryd_task_time_limit": "task_time_limit_s",
    "task_track_started": "task_track_started",
    "celery_track_started": "task_track_started",
    "worker_concurrency": "worker_concurrency",
    "celeryd_concurrency": "worker_concurrency",
    "worker_max_memory_per_child": "worker_max_memory_per_child",
    "celeryd_max_memory_per_child": "worker_max_memory_per_child",
    "worker_max_tasks_per_child": "worker_max_tasks_per_child",
    "celeryd_max_tasks_per_child": "worker_max_tasks_per_child",
    "worker_pool": "worker_pool",
    "celeryd_pool": "worker_pool",
    "worker_prefetch_multiplier": "worker_prefetch_multiplier",
    "celeryd_prefetch_multiplier": "worker_prefetch_multiplier",
    "worker_send_task_events": "worker_send_task_events",
    "celery_send_events": "worker_send_task_events",
    # -- not supported ------------------------------------------------------------------------
    **_unsupported(
        "beat_scheduler celerybeat_scheduler",
        "aiotq runs its own beat, from beat_schedule and @app.periodic, with its state in the "
        "result backend: a Celery scheduler class such as django_celery_beat's cannot run in it",
    ),
    **_unsupported(
        "beat_schedule_filename celerybeat_schedule_filename beat_sync_every celerybeat_sync_every",
        "aiotq's beat keeps its last runs in the result backend, not in a file",
    ),
    **_unsupported("beat_max_loop_interval celerybeat_max_loop_interval"),
    **_unsupported(
        "beat_cron_starting_deadline celerybeat_cron_starting_deadline",
        "beat_missed_runs says what happens to runs due while no beat ran",
    ),
    **_unsupported("broker_read_url broker_write_url", "one broker_url serves both"),
    **_unsupported("broker_transport", "the scheme of broker_url chooses the broker"),
    **_unsupported("broker_host broker_port broker_user broker_password broker_vhost", _IN_URL),
    **_unsupported(
        "broker_use_ssl",
        "write TLS options into the URL: rediss://...?ssl_cert_reqs=required&ssl_ca_certs=..., "
        "amqps://...?cafile=...",
    ),
    **_unsupported(
        "broker_heartbeat broker_heartbeat_checkrate",
        "RabbitMQ: write ?heartbeat=<seconds> into broker_url",
    ),
    **_unsupported(
        "broker_failover_strategy",
        "RabbitMQ: the URLs of a failover list in broker_url are tried in order, round-robin",
    ),
    **_unsupported(
        "broker_connection_retry broker_connection_max_retries broker_channel_error_retry "
        "broker_login_method broker_pool_acquire_timeout"
    ),
    **_unsupported(
        "broker_native_delayed_delivery_queue_type",
        "aiotq delays messages in queues of its own",
    ),
    **_unsupported(
        "cache_backend celery_cache_backend cache_backend_options celery_cache_backend_options "
        "cassandra_auth_kwargs cassandra_auth_provider cassandra_bundle_path "
        "cassandra_entry_ttl cassandra_keyspace cassandra_options cassandra_port "
        "cassandra_read_consistency cassandra_servers cassandra_table "
        "cassandra_write_consistency "
        "s3_access_key_id s3_base_path s3_bucket s3_endpoint_url s3_region "
        "s3_secret_access_key "
        "azureblockblob_base_path azureblockblob_connection_timeout "
        "azureblockblob_container_name azureblockblob_read_timeout "
        "azureblockblob_retry_increment_base azureblockblob_retry_initial_backoff_sec "
        "azureblockblob_retry_max_attempts "
        "gcs_base_path gcs_bucket gcs_project gcs_ttl "
        "couchbase_backend_settings celery_couchbase_backend_settings "
        "arangodb_backend_settings celery_arangodb_backend_settings "
        "mongodb_backend_settings celery_mongodb_backend_settings "
        "cosmosdbsql_collection_name cosmosdbsql_consistency_level cosmosdbsql_database_name "
        "cosmosdbsql_max_retry_attempts cosmosdbsql_max_retry_wait_time "
        "elasticsearch_max_retries celery_elasticsearch_max_retries "
        "elasticsearch_retry_on_timeout celery_elasticsearch_retry_on_timeout "
        "elasticsearch_save_meta_as_text celery_elasticsearch_save_meta_as_text "
        "elasticsearch_timeout celery_elasticsearch_timeout "
        "database_create_tables_at_setup database_engine_callback database_engine_options "
        "celery_result_engine_options database_short_lived_sessions "
        "celery_result_db_short_lived_sessions database_table_names "
        "celery_result_db_tablenames database_table_schemas database_url celery_result_dburi",
        _BACKENDS,
    ),
    **_unsupported(
        "control_exchange control_queue_durable control_queue_exclusive control_queue_expires "
        "control_queue_ttl "
        "event_exchange celery_event_exchange event_queue_durable celery_event_queue_durable "
        "event_queue_exclusive celery_event_queue_exclusive event_queue_expires "
        "celery_event_queue_expires event_queue_prefix celery_event_queue_prefix "
        "event_queue_ttl celery_event_queue_ttl event_serializer celery_event_serializer"
    ),
    **_unsupported(
        "redis_db celery_redis_db redis_host celery_redis_host redis_port celery_redis_port "
        "redis_username celery_redis_username redis_password celery_redis_password",
        "write it into the redis:// URL of result_backend",
    ),
    **_unsupported(
        "redis_backend_use_ssl celery_redis_backend_use_ssl",
        "write TLS options into the URL: rediss://...?ssl_cert_reqs=required&ssl_ca_certs=...",
    ),
    **_unsupported(
        "redis_max_connections celery_redis_max_connections",
        "broker_pool_size bounds the Redis broker's and backend's connections",
    ),
    **_unsupported(
        "redis_socket_timeout celery_redis_socket_timeout",
        "broker_socket_timeout_s bounds the Redis broker's and backend's reads",
    ),
    **_unsupported(
        "redis_socket_connect_timeout celery_redis_socket_connect_timeout",
        "broker_connection_timeout_s bounds every connect",
    ),
    **_unsupported(
        "redis_retry_on_timeout celery_redis_retry_on_timeout redis_socket_keepalive "
        "celery_redis_socket_keepalive"
    ),
    **_unsupported(
        "result_backend_always_retry celery_result_backend_always_retry "
        "result_backend_max_retries celery_result_backend_max_retries "
        "result_backend_base_sleep_between_retries_ms "
        "celery_result_backend_base_sleep_between_retries_ms "
        "result_backend_max_sleep_between_retries_ms "
        "celery_result_backend_max_sleep_between_retries_ms",
        _STORE_RETRIED,
    ),
    **_unsupported("result_accept_content result_cache_max celery_max_cached_results"),
    **_unsupported(
        "result_chord_join_timeout celery_result_chord_join_timeout "
        "result_chord_retry_interval celery_result_chord_retry_interval",
        "a chord is counted in the result backend as its parts finish: nothing polls",
    ),
    **_unsupported(
        "result_compression celery_result_compression task_compression celery_message_compression",
        _NOT_COMPRESSED,
    ),
    **_unsupported(
        "result_exchange celery_result_exchange result_exchange_type "
        "celery_result_exchange_type result_persistent celery_result_persistent",
        "rpc:// results go to the caller's own queue",
    ),
    **_unsupported(
        "security_cert_store celery_security_cert_store security_certificate "
        "celery_security_certificate security_digest celery_security_digest security_key "
        "celery_security_key security_key_password celery_security_key_password",
        "use task_signing_key (HMAC)",
    ),
    **_unsupported(
        "task_acks_on_failure_or_timeout celery_acks_on_failure_or_timeout "
        "task_acks_on_failure celery_acks_on_failure task_acks_on_timeout "
        "celery_acks_on_timeout task_allow_error_cb_on_chord_header "
        "celery_allow_error_cb_on_chord_header task_create_missing_queues "
        "celery_create_missing_queues task_create_missing_queue_type "
        "celery_create_missing_queue_type task_create_missing_queue_exchange_type "
        "celery_create_missing_queue_exchange_type task_default_delivery_mode "
        "celery_default_delivery_mode task_inherit_parent_priority "
        "celery_inherit_parent_priority task_remote_tracebacks celery_remote_tracebacks "
        "task_store_eager_result celery_store_eager_result "
        "task_store_errors_even_if_ignored celery_store_errors_even_if_ignored"
    ),
    **_unsupported(
        "task_default_rate_limit celery_default_rate_limit",
        "give the task a rate_limit, or every task: task_annotations = {'*': {'rate_limit': ...}}",
    ),
    **_unsupported(
        "celery_task_protocol",
        "the old name of task_protocol: set task_protocol = 'celery' to speak Celery's messages",
    ),
    **_unsupported(
        "task_publish_retry celery_task_publish_retry task_publish_retry_policy "
        "celery_task_publish_retry_policy",
        "a publish is retried for broker_publish_retry_s",
    ),
    **_unsupported(
        "task_queue_max_priority celery_queue_max_priority",
        "RabbitMQ's classic queues are declared with x-max-priority 9",
    ),
    **_unsupported(
        "worker_soft_shutdown_timeout celeryd_soft_shutdown_timeout "
        "worker_enable_soft_shutdown_on_idle celeryd_enable_soft_shutdown_on_idle",
        "the first signal lets running tasks finish for worker_shutdown_timeout_s",
    ),
    **_unsupported(
        "worker_hijack_root_logger celeryd_hijack_root_logger",
        "the aiotq worker command adds its log handler only when the root logger has none",
    ),
    **_unsupported(
        "worker_log_format celeryd_log_format worker_task_log_format celeryd_task_log_format",
        "the aiotq worker command logs in Celery's format; configure logging first to change it",
    ),
    **_unsupported(
        "worker_eta_task_limit celeryd_eta_task_limit",
        "a delayed task waits in the broker, not in the worker's memory",
    ),
    **_unsupported(
        "worker_state_db celeryd_state_db",
        "revokes are kept in the result backend, for every worker",
    ),
    **_unsupported(
        "worker_agent celeryd_agent worker_autoscaler celeryd_autoscaler "
        "worker_cancel_long_running_tasks_on_connection_loss "
        "celeryd_cancel_long_running_tasks_on_connection_loss worker_consumer "
        "celeryd_consumer worker_deduplicate_successful_tasks "
        "celeryd_deduplicate_successful_tasks worker_detect_quorum_queues "
        "celeryd_detect_quorum_queues worker_direct celery_worker_direct "
        "worker_disable_prefetch celeryd_disable_prefetch worker_disable_rate_limits "
        "celery_disable_rate_limits worker_enable_prefetch_count_reduction "
        "celeryd_enable_prefetch_count_reduction worker_enable_remote_control "
        "celery_enable_remote_control worker_log_color celeryd_log_color "
        "worker_lost_wait celeryd_worker_lost_wait worker_pool_putlocks "
        "celeryd_pool_putlocks worker_pool_restarts celeryd_pool_restarts "
        "worker_proc_alive_timeout celeryd_proc_alive_timeout worker_redirect_stdouts "
        "celery_redirect_stdouts worker_redirect_stdouts_level "
        "celery_redirect_stdouts_level "
        "worker_timer celeryd_timer worker_timer_precision celeryd_timer_precision"
    ),
}

# Celery's broker_transport_options keys that have an aiotq setting; any other key (kombu's
# priority_steps, sep, global_keyprefix, confirm_publish...) is accepted and ignored: each
# aiotq broker has its own, typed settings, and a Celery config must still load.
TRANSPORT_OPTIONS: dict[str, str] = {
    "visibility_timeout": "broker_visibility_timeout_s",
    "max_connections": "broker_pool_size",
    "socket_timeout": "broker_socket_timeout_s",
    "socket_connect_timeout": "broker_connection_timeout_s",
}
