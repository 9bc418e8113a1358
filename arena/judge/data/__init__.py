"""Data files of arena-judge (the price table); a package so that installs ship them."""
