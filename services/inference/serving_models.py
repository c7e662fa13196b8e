"""GET /v1/models: the default name (usually the alias `prod`) and every loaded model's registry name."""

from services.inference.config import InferenceSettings
from services.inference.model_manager import ModelManager, ServedModel
from services.inference.protocol import ModelCard, ModelList


class OpenAIServingModels:
    def __init__(self, settings: InferenceSettings, manager: ModelManager) -> None:
        self.settings = settings
        self.manager = manager

    def list(self) -> ModelList:
        cards: list[ModelCard] = []
        default = self.manager.default
        if default is not None:
            cards.append(self._card(self.settings.model, default))
        for served in self.manager.served_models():
            cards.append(self._card(served.name, served))
        return ModelList(data=cards)

    @staticmethod
    def _card(name: str, served: ServedModel) -> ModelCard:
        return ModelCard(
            id=name,
            created=served.loaded_at,
            root=served.model_id,
            max_model_len=served.max_context,
            dtype=served.engine.dtype,
        )
