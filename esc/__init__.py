"""ESC: an Elastic Services Controller.

Kept free of imports on purpose: the local VIM's VNF program lives in this
package and must start with nothing but the standard library loaded.
"""

__version__ = "1.3.0.2"
