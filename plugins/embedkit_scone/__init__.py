"""embedkit_scone: SCONE, contextual n-gram input embeddings (arXiv 2502.01637).

``FGramVocab`` builds the f-gram vocabulary (the most frequent token n-grams of length 2..K,
counted exactly) and maps every position to the longest f-gram ending at it.
"""

from embedkit_scone.fit_stats import FitStats
from embedkit_scone.vocab import FGram, FGramVocab

__all__ = ["FGram", "FGramVocab", "FitStats"]
