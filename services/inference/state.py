"""Everything the HTTP routers reach through `request.app.state.gateway`."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.inference.auth import AdminTokenStore, KeyStore, RateLimiter
from services.inference.config import InferenceSettings
from services.inference.fine_tuning_follower import FineTuningFollower
from services.inference.model_manager import ModelManager
from services.inference.serving_base import GenerationService
from services.inference.serving_chat import OpenAIServingChat
from services.inference.serving_completion import OpenAIServingCompletion
from services.inference.serving_files import OpenAIServingFiles
from services.inference.serving_fine_tuned_models import FineTunedModels
from services.inference.serving_fine_tuning import OpenAIServingFineTuning
from services.inference.serving_keys import KeyAdministration
from services.inference.serving_models import OpenAIServingModels


@dataclass
class GatewayState:
    settings: InferenceSettings
    manager: ModelManager
    core: GenerationService
    chat: OpenAIServingChat
    completion: OpenAIServingCompletion
    models: OpenAIServingModels
    keys: KeyStore
    key_admin: KeyAdministration
    admin_tokens: AdminTokenStore
    limiter: RateLimiter
    files: OpenAIServingFiles
    fine_tuning: OpenAIServingFineTuning
    fine_tuned_models: FineTunedModels

    @classmethod
    def build(
        cls,
        settings: InferenceSettings,
        manager: ModelManager,
        keys: KeyStore,
        admin_tokens: AdminTokenStore,
        files: OpenAIServingFiles,
        follower: FineTuningFollower,
    ) -> "GatewayState":
        core = GenerationService(settings, manager)
        return cls(
            settings=settings,
            manager=manager,
            core=core,
            chat=OpenAIServingChat(core),
            completion=OpenAIServingCompletion(core),
            models=OpenAIServingModels(settings, manager),
            keys=keys,
            key_admin=KeyAdministration(keys),
            admin_tokens=admin_tokens,
            limiter=RateLimiter(),
            files=files,
            fine_tuning=OpenAIServingFineTuning(settings, files.records, follower.trainer, follower),
            fine_tuned_models=FineTunedModels(settings, files.records, manager.registry, follower.trainer),
        )


def gateway(request: Request) -> GatewayState:
    return request.app.state.gateway


Gateway = Annotated[GatewayState, Depends(gateway)]
