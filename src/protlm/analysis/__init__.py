"""Analysis of embeddings: 2-D projections (t-SNE, UMAP) with silhouette scores.

Heavy libraries (scikit-learn, umap-learn, matplotlib, plotly) are imported inside the functions
of :mod:`protlm.analysis.projection`, so importing this package stays cheap.
"""

from protlm.analysis.projection import (
    AA_GROUPS,
    ProjectionParams,
    project,
    project_proteins,
    project_tokens,
    silhouette,
    stratified_subsample,
    token_embedding_matrix,
)

__all__ = [
    "AA_GROUPS",
    "ProjectionParams",
    "project",
    "project_proteins",
    "project_tokens",
    "silhouette",
    "stratified_subsample",
    "token_embedding_matrix",
]
