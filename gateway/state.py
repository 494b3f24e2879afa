"""The gateway's long-lived services, built once in the app's lifespan."""

from __future__ import annotations

import contextlib

from aio_pika.abc import AbstractRobustConnection

from gateway.bursts import BurstPromoter, burst_threshold
from gateway.cluster_metrics import CLUSTER
from gateway.keys import KeyRing
from gateway.uploads import UploadSlots
from runtime.broker import topology
from runtime.broker.backlog import BacklogMonitor
from runtime.broker.control import CONTROL_KEY, ControlBus
from runtime.broker.hints import WorkHints, hint_interval
from runtime.broker.membership import Membership
from runtime.broker.publisher import InvokePublisher
from runtime.broker.routing import Router
from runtime.cache import FunctionCache
from runtime.flow.backpressure import Backpressure
from runtime.flow.burst import BurstDetector
from runtime.hop import HOP_KEY, HopClient, HopProbe
from runtime.settings import Settings
from runtime.store.bundles import BundleStore
from runtime.store.functions import FunctionStore
from runtime.store.mongo import Mongo
from runtime.store.rates import RateStore
from runtime.store.tasks import TaskStore
from runtime.store.tenants import Tenant, TenantStore
from runtime.store.timers import TimerStore
from runtime.store.usage import UsageStore
from runtime.tasks.admission import RateLimiter
from runtime.tasks.quotas import QuotaKeeper
from runtime.tasks.submit import Submitter
from runtime.webhook_policy import WebhookPolicy


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mongo = Mongo(settings)
        self.tenants = TenantStore(self.mongo)
        self.functions = FunctionStore(self.mongo)
        self.bundles = BundleStore(self.mongo, settings.bundle_collect_grace_s)
        self.uploads = UploadSlots(settings.uploads_concurrent, settings.uploads_wait_s)
        self.tasks = TaskStore(self.mongo, settings.task_retention_s)
        self.timers = TimerStore(self.mongo)
        self.cache = FunctionCache(self.functions)
        self.keys = KeyRing(self.tenants, settings.key_refresh_s)
        self.webhook_policy = WebhookPolicy(settings.webhook_networks)
        self.membership = Membership(settings.heartbeat_s, cluster=settings.cluster_id)
        CLUSTER.membership = self.membership  # the schedulers' metrics, from their heartbeats
        # Flow control on the invoke path (gateway/throttle.py).
        self.rate_limiter = RateLimiter(RateStore(self.mongo))
        self.backpressure = Backpressure(
            settings.backlog_messages, settings.backlog_age_s, settings.backlog_poll_s,
            max_wait_s=settings.backlog_wait_s, burst=settings.backlog_burst,
        )
        self.connection: AbstractRobustConnection | None = None

    async def start(self) -> None:
        await self.mongo.ensure_indexes()
        await self.tasks.ensure_indexes()
        await self.timers.ensure_indexes()
        self.connection = await topology.connect(self.settings.amqp_url)
        self.publisher = InvokePublisher(self.connection)
        await self.publisher.start()
        self.submitter = Submitter(self.tasks, self.timers, self.publisher)
        self.control = ControlBus(
            self.connection, self.settings.cluster_id, self.settings.cluster_key(CONTROL_KEY),
            self.settings.control_max_age_s,
        )
        self.control.subscribe(self.cache.on_control)
        self.control.subscribe(self.membership.on_control)
        self.control.subscribe(self.keys.on_control)
        await self.control.start()
        # Loaded once the bus listens: a key issued meanwhile is in the load or an event.
        await self.keys.start()
        hints = WorkHints(self.control, hint_interval(self.settings))
        router = Router(self.functions, self.cache, self.publisher, self.connection)
        router.control = self.control
        self.bursts = BurstPromoter(router, BurstDetector(burst_threshold(self.settings)))

        def published(tenant: str, function: str) -> None:
            hints.note(tenant)
            self.bursts.note(tenant, function)

        self.publisher.on_published = published
        self.hop = HopClient(self.settings.cluster_key(HOP_KEY))
        self.hop_probe = HopProbe(self.membership, self.hop, self.settings.heartbeat_s)
        self.hop_probe.start()
        self.backlog = BacklogMonitor(self.connection, self.backpressure, self.settings.backlog_poll_s)
        self.backlog.start()
        self.quotas = QuotaKeeper(
            self.settings, self.tenants, UsageStore(self.mongo, self.settings.task_retention_s),
            self.connection, self.backpressure,
        )
        self.quotas.start()

    async def stop(self) -> None:
        if hasattr(self, "quotas"):
            await self.quotas.close()
        if hasattr(self, "backlog"):
            await self.backlog.close()
        if hasattr(self, "bursts"):
            await self.bursts.close()
        if hasattr(self, "hop_probe"):
            self.hop_probe.close()
        if hasattr(self, "hop"):
            self.hop.close()
        if hasattr(self, "submitter"):
            await self.submitter.close()
        await self.keys.close()
        if hasattr(self, "control"):
            await self.control.close()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        await self.mongo.close()

    async def tenant_for_key(self, api_key: str) -> Tenant | None:
        return await self.keys.tenant_for(api_key)
