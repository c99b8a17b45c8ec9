"""Raw-dataset preparation scripts: each turns a public dataset into a ctrjax dataset directory."""
