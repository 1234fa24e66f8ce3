/* placeholder: replaced by the fallocate shim */
