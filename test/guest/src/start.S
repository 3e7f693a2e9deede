/*
 * Multiboot (v1) entry of the postcopy test guest.
 *
 * The header sits in its own section that the linker script places first, well
 * inside the 8 KiB the multiboot loader scans. We use the "address fields"
 * variant (flag bit 16) so QEMU's loader does not depend on ELF details: the
 * image is loaded flat at LOAD_ADDR and entered at _start in 32-bit protected
 * mode, paging off, interrupts off, EAX = bootloader magic, EBX = info struct.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00010000
#define MB_CHECKSUM (-(MB_MAGIC + MB_FLAGS))

    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long MB_CHECKSUM
    .long mb_header          /* header_addr */
    .long __load_start       /* load_addr */
    .long __load_end         /* load_end_addr (end of initialised data) */
    .long __bss_end          /* bss_end_addr (loader zeroes up to here) */
    .long _start             /* entry_addr */

    .section .text
    .globl _start
_start:
    cli
    mov $stack_top, %esp
    xor %ebp, %ebp
    push %ebx                /* multiboot info */
    push %eax                /* magic */
    call guest_main
1:  hlt
    jmp 1b

    .section .bss
    .align 4096
    .globl stack_bottom
stack_bottom:
    .skip 16384
stack_top:
