"""Fusion of live ultrasound metrics with stored MRI/PET biomarkers, and biopsy-site ranking."""

from mmstream.fusion.assess import FusionRules, SiteAssessment, assess_site, rank_patient, rank_sites, stored_values
from mmstream.fusion.cache import PatientCache
from mmstream.fusion.node import FusionNode, attach_fusion

__all__ = ["FusionNode", "attach_fusion", "FusionRules", "PatientCache", "SiteAssessment", "assess_site", "rank_patient",
           "rank_sites", "stored_values"]
