"""Prompt formats (PaLI/PaliGemma style). Detection prompts and targets: ``palix.loc_tokens``.

* captioning: ``caption en`` -> ``a blue circle``
* VQA: ``answer en {question}`` -> ``{answer}``
* detection: ``detect {a} ; {b}`` -> ``<loc..><loc..><loc..><loc..> {a} ; ...``
"""

from palix import loc_tokens

detection_prompt = loc_tokens.detection_prompt
detection_target = loc_tokens.detection_target


def caption_prompt(language: str = "en") -> str:
  return f"caption {language}"


def vqa_prompt(question: str, language: str = "en") -> str:
  question = " ".join(question.split())
  if not question:
    raise ValueError("empty question")
  return f"answer {language} {question}"


def with_article(noun: str) -> str:
  """``a trouser`` / ``an ankle boot``."""
  return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun
