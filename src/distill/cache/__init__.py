"""Teacher-output cache: the teacher runs once, distillation epochs read its stored top-k logits."""

from distill.cache.build import build_cache, cache_fingerprint, open_cache, summary
from distill.cache.plan import cache_path, cached_eval_logits, obtain_cache, prepare_cache, why_not_cached
from distill.cache.store import TeacherCache, densify

__all__ = ["TeacherCache", "build_cache", "cache_fingerprint", "cache_path", "cached_eval_logits", "densify",
           "obtain_cache",
           "open_cache", "prepare_cache", "summary", "why_not_cached"]
