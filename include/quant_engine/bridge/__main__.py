"""``python -m quant_engine.bridge``: run the bridge service configured from the environment."""

from quant_engine.bridge.service import main

raise SystemExit(main())
