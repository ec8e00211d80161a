"""The configuration: one TOML file for every service, one frozen dataclass per section.

:mod:`.file` reads the file and builds :class:`ServiceConfig`; :mod:`.checks` holds the checks
every section shares (unknown key, bind address, "both or neither", booleans, sub-tables);
:mod:`.tls`, :mod:`.dicomweb`, :mod:`.ops` and :mod:`.review` hold their sections. The
configuration imports no other room of :mod:`medblip_dicom.integrations`.
"""

from medblip_dicom.integrations.config.checks import ConfigError
from medblip_dicom.integrations.config.file import ServiceConfig, load_config

__all__ = ["ConfigError", "ServiceConfig", "load_config"]
