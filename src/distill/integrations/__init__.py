"""Distillation inside the training frameworks people already use.

- :mod:`distill.integrations.transformers`: :class:`DistillationTrainer`, a Hugging Face
  ``transformers.Trainer`` that trains the student of any :class:`~distill.methods.Distiller`.

Each submodule imports its framework, so import the one you need by its full name; this
package itself imports nothing optional.
"""
